"""Entry point: registers the ``python`` stack."""

from __future__ import annotations

from tunray import hookimpl
from tunray.plugin.registry import Registry

from tunray_stack_python.stack import PythonStack


@hookimpl
def tunray_register_types(registry: Registry) -> None:
    registry.add_stack(PythonStack)
