"""Entry point: registers the socks, mixed, http, dokodemo-door and tunnel inbounds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunray import hookimpl

if TYPE_CHECKING:
    from tunray.plugin.registry import Registry


@hookimpl
def tunray_register_types(registry: Registry) -> None:
    from tunray_local.dokodemo import DokodemoInbound, TunnelInbound
    from tunray_local.http import HttpInbound
    from tunray_local.socks import MixedInbound, SocksInbound

    for cls in (SocksInbound, MixedInbound, HttpInbound, DokodemoInbound, TunnelInbound):
        registry.add_inbound(cls)
