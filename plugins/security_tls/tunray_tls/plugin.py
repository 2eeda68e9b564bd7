"""Entry point of ``tunray-security-tls``: registers the ``security:tls`` layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunray import hookimpl

if TYPE_CHECKING:
    from tunray.plugin.registry import Registry


@hookimpl
def tunray_register_types(registry: Registry) -> None:
    from tunray_tls.layer import TlsSecurity

    registry.add_transport(TlsSecurity)
