"""Entry point of ``tunray-outbound-vless`` (group ``tunray``, name ``outbound_vless``): registers ``vless``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunray import hookimpl

if TYPE_CHECKING:
    from tunray.plugin.registry import Registry


@hookimpl
def tunray_register_types(registry: Registry) -> None:
    from tunray_vless.outbound import VlessOutbound

    registry.add_outbound(VlessOutbound)
