"""Entry point of ``tunray-security-reality``: registers the ``security:reality`` layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunray import hookimpl

if TYPE_CHECKING:
    from tunray.plugin.registry import Registry


@hookimpl
def tunray_register_types(registry: Registry) -> None:
    from tunray_reality.layer import RealitySecurity

    registry.add_transport(RealitySecurity)
