"""``LwipStack``: the lwIP core (:class:`~tunray_stack_lwip.core.LwipCore`) under the core's driver.

Everything asyncio is :class:`tunray.stackdriver.StackDriver`; this module declares the
stack's settings and capabilities, refuses to validate when liblwip is missing, and
builds the core for the device it is attached to.
"""

from __future__ import annotations

from typing import ClassVar

from tunray.config.errors import ConfigError
from tunray.config.schema import Settings, TypedSchema
from tunray.stack import StackOptions
from tunray.stackcore import StackCapabilities
from tunray.stackdriver import StackDriver

from tunray_stack_lwip.binding import unavailable_reason
from tunray_stack_lwip.core import LwipConfig, LwipCore
from tunray_stack_lwip.settings import LwipStackSettings


def _check_available(_settings: Settings, path: str) -> None:
    reason = unavailable_reason()
    if reason is not None:
        stack_path = path.rsplit(".", 1)[0] + ".stack" if "." in path else "stack"
        raise ConfigError(stack_path, reason)


class LwipStack(StackDriver):
    name: ClassVar[str] = "lwip"
    settings_schema: ClassVar[TypedSchema[LwipStackSettings]] = TypedSchema(LwipStackSettings,
                                                                            check=_check_available)
    capabilities: ClassVar[StackCapabilities] = StackCapabilities(
        lazy_handshake=True, icmp_echo=True, vnet_hdr=True, tso=True, buffer_budget=True,
        half_open_budget=True,
    )

    def __init__(self, options: StackOptions) -> None:
        super().__init__(options)
        self.settings = self.settings_schema.typed(options.settings)

    def core_config(self, vnet_hdr: bool) -> LwipConfig:
        o = self.options
        s = self.settings
        return LwipConfig(
            mtu=o.mtu, vnet_hdr=vnet_hdr, gso=s.gso and vnet_hdr, mss_rewrite=s.mss_rewrite,
            eager=o.handshake == "eager", send_high_water=s.send_high_water, rx_buffer=o.tcp_buffer,
            tcp_idle_timeout=o.tcp_idle_timeout, handshake_timeout=o.handshake_timeout,
            time_wait=float(s.time_wait), udp_idle_timeout=o.udp_idle_timeout,
            udp_queue_packets=o.udp_queue_packets, max_flows=o.max_flows, max_buffered=o.max_buffered_bytes,
            max_half_open=o.max_half_open, max_half_open_per_source=o.max_half_open_per_source,
        )

    def make_core(self, vnet_hdr: bool) -> LwipCore:
        return LwipCore(self.core_config(vnet_hdr), self.time())
