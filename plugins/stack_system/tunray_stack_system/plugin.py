"""Entry point: registers the ``system`` and ``mixed`` stacks."""

from __future__ import annotations

from tunray import hookimpl
from tunray.plugin.registry import Registry

from tunray_stack_system.stack import MixedStack, SystemStack


@hookimpl
def tunray_register_types(registry: Registry) -> None:
    registry.add_stack(SystemStack)
    registry.add_stack(MixedStack)
