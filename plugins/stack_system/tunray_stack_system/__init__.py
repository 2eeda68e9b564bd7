"""tunray-stack-system: TCP NATed into the kernel's own TCP (``"stack": "system"`` and ``"mixed"``).

Quick start::

    # pyproject.toml
    [project.entry-points.tunray]
    stack_system = "tunray_stack_system.plugin"

The sans-IO half is :class:`tunray_stack_system.core.SystemCore` (NAT in :mod:`tunray_stack_system.nat`);
:class:`tunray_stack_system.stack.SystemStack` runs it under the core's :class:`tunray.stackdriver.StackDriver`;
on a real TUN the packets of known connections are rewritten by the C loop of :mod:`tunray_stack_system.fastpath`.
"""

from __future__ import annotations

__all__ = ["MixedStack", "SystemStack"]

from tunray_stack_system.stack import MixedStack, SystemStack
