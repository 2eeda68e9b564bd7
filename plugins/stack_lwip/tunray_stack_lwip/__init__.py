"""tunray-stack-lwip: TCP on Debian's lwIP 2.1.3 through cffi (``"stack": "lwip"``).

Quick start::

    # pyproject.toml
    [project.entry-points.tunray]
    stack_lwip = "tunray_stack_lwip.plugin"

The sans-IO core is :class:`tunray_stack_lwip.core.LwipCore` (C glue in ``glue.c``); the
asyncio side is the core's :class:`tunray.stackdriver.StackDriver`.
"""

from __future__ import annotations

__all__ = ["LwipStack"]

from tunray_stack_lwip.stack import LwipStack
