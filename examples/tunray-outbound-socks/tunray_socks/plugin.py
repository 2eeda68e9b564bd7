"""Entry point: registers :class:`~tunray_socks.outbound.SocksOutbound`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunray import hookimpl

if TYPE_CHECKING:
    from tunray.plugin.registry import Registry


@hookimpl
def tunray_register_types(registry: Registry) -> None:
    from tunray_socks.outbound import SocksOutbound

    registry.add_outbound(SocksOutbound)
