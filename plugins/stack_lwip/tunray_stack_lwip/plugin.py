"""Entry point: registers the ``lwip`` stack."""

from __future__ import annotations

from tunray import hookimpl
from tunray.plugin.registry import Registry

from tunray_stack_lwip.stack import LwipStack


@hookimpl
def tunray_register_types(registry: Registry) -> None:
    registry.add_stack(LwipStack)
