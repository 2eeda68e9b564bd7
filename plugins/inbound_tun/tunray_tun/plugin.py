"""Entry point: registers the ``tun`` inbound, bound to this registry's stacks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunray import hookimpl

if TYPE_CHECKING:
    from tunray.plugin.registry import Registry


@hookimpl
def tunray_register_types(registry: Registry) -> None:
    from tunray_tun.inbound import TunInbound

    registry.add_inbound(TunInbound)
