"""``PythonStack``: the sans-IO :class:`~tunray_stack_python.core.Core` under the core's driver.

Everything asyncio (device reading in batches, timers, links, backpressure, the accept
queue) is :class:`tunray.stackdriver.StackDriver`; this module only declares the stack's
settings and capabilities and builds the core for the device it is attached to.
"""

from __future__ import annotations

from typing import ClassVar

from tunray.config.schema import TypedSchema
from tunray.stack import StackOptions
from tunray.stackcore import StackCapabilities
from tunray.stackdriver import StackDriver

from tunray_stack_python.core import Core, CoreConfig
from tunray_stack_python.settings import PythonStackSettings


class PythonStack(StackDriver):
    name: ClassVar[str] = "python"
    settings_schema: ClassVar[TypedSchema[PythonStackSettings]] = TypedSchema(PythonStackSettings)
    capabilities: ClassVar[StackCapabilities] = StackCapabilities(
        lazy_handshake=True, icmp_echo=True, vnet_hdr=True, tso=True, half_open_budget=True,
        buffer_budget=True,
    )

    def __init__(self, options: StackOptions) -> None:
        super().__init__(options)
        self.settings = self.settings_schema.typed(options.settings)

    def core_config(self, vnet_hdr: bool) -> CoreConfig:
        o = self.options
        s = self.settings
        return CoreConfig(
            mtu=o.mtu, vnet_hdr=vnet_hdr, gso=s.gso and vnet_hdr, eager=o.handshake == "eager",
            tcp_buffer=o.tcp_buffer, send_high_water=s.send_high_water, initial_cwnd=s.initial_cwnd,
            tcp_idle_timeout=o.tcp_idle_timeout, handshake_timeout=o.handshake_timeout,
            time_wait=float(s.time_wait), fin_timeout=float(s.fin_timeout),
            udp_idle_timeout=o.udp_idle_timeout, udp_queue_packets=o.udp_queue_packets, max_flows=o.max_flows,
            max_half_open=o.max_half_open, max_half_open_per_source=o.max_half_open_per_source,
            max_buffered=o.max_buffered_bytes,
        )

    def make_core(self, vnet_hdr: bool) -> Core:
        return Core(self.core_config(vnet_hdr))
