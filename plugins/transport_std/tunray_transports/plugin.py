"""Entry point of ``tunray-transport-std`` (group ``tunray``, name ``transport_std``)."""

from __future__ import annotations

from tunray import hookimpl
from tunray.plugin.registry import Registry


@hookimpl
def tunray_register_types(registry: Registry) -> None:
    from tunray_transports.layers import (
        GrpcTransport,
        HttpUpgradeTransport,
        WebSocketTransport,
        XhttpTransport,
    )

    registry.add_transport(WebSocketTransport)
    registry.add_transport(HttpUpgradeTransport)
    registry.add_transport(GrpcTransport)
    registry.add_transport(XhttpTransport)
