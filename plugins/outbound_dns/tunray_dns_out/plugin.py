"""Entry point: registers :class:`~tunray_dns_out.outbound.DNSOutbound`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunray import hookimpl

if TYPE_CHECKING:
    from tunray.plugin.registry import Registry


@hookimpl
def tunray_register_types(registry: Registry) -> None:
    from tunray_dns_out.outbound import DNSOutbound

    registry.add_outbound(DNSOutbound)
