"""``PythonStack``: the asyncio adapter around the sans-IO :class:`~tunray_stack_python.core.Core`.

One ``loop.add_reader`` callback reads every waiting packet, feeds them to the core,
dispatches the events to links, and writes what the core drained.  One ``call_at``
timer follows ``core.next_timer()`` (re-armed only when the deadline moves earlier;
an early wakeup simply re-arms).  Link operations ask for one flush per loop
iteration through :meth:`PythonStack.kick`.

Ownership: the stack never closes the device.  Whoever opened it (the TUN inbound)
closes it after :meth:`aclose`, which stops reading, resets every flow (the RSTs are
written first) and wakes every waiter.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
from typing import Any, ClassVar

from tunray.config.schema import Bool, Field, Int, Schema
from tunray.device import PacketDevice
from tunray.net.address import Destination, Network
from tunray.stack import Flow, Stack, StackClosed, StackOptions

from tunray_stack_python import events
from tunray_stack_python.core import Core, CoreConfig
from tunray_stack_python.links import TcpLink, UdpLink

READ_BATCH = 512  # packets per wakeup before other callbacks get a turn


def _ip(raw: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw)


class PythonStack(Stack):
    name: ClassVar[str] = "python"
    settings_schema: ClassVar[Schema] = Schema(
        Field("gso", Bool(), default=True,
              doc="send TCP super-segments (up to 64 KiB) when the TUN has vnet headers"),
        Field("sendHighWater", Int(min=16 << 10, max=1 << 30), default=1 << 20,
              doc="bytes queued towards the app per TCP flow before link.write waits"),
        Field("initialCwnd", Int(min=4 << 10, max=1 << 30), default=256 << 10,
              doc="initial congestion window in bytes (the app is local)"),
        Field("timeWait", Int(min=0, max=240), default=2, doc="TIME_WAIT seconds"),
        Field("finTimeout", Int(min=1, max=600), default=30, doc="FIN_WAIT_2 seconds"),
    )

    def __init__(self, options: StackOptions) -> None:
        super().__init__(options)
        self.core = Core(self._core_config(False, False))
        self.core.counters = self.counters
        self.loop: asyncio.AbstractEventLoop  # set by attach()
        self._device: PacketDevice | None = None
        self._pending: collections.deque[Flow] = collections.deque()
        self._accept_waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._kicked = False

    def _core_config(self, vnet: bool, gso: bool) -> CoreConfig:
        o = self.options
        s = o.settings
        return CoreConfig(
            mtu=o.mtu, vnet_hdr=vnet, gso=gso and vnet, eager=o.handshake == "eager", tcp_buffer=o.tcp_buffer,
            send_high_water=s.get("sendHighWater", 1 << 20), initial_cwnd=s.get("initialCwnd", 256 << 10),
            tcp_idle_timeout=o.tcp_idle_timeout, handshake_timeout=o.handshake_timeout,
            time_wait=float(s.get("timeWait", 2)), fin_timeout=float(s.get("finTimeout", 30)),
            udp_idle_timeout=o.udp_idle_timeout, udp_queue_packets=o.udp_queue_packets, max_flows=o.max_flows,
        )

    def time(self) -> float:
        return self.loop.time()

    async def attach(self, device: PacketDevice) -> None:
        if self._device is not None:
            raise RuntimeError("PythonStack.attach called twice")
        self.loop = asyncio.get_running_loop()
        self._device = device
        vnet = device.offloads.vnet_hdr
        self.core.config = self._core_config(vnet, bool(self.options.settings.get("gso", True)))
        self.loop.add_reader(device.fileno(), self._on_readable)

    # --- the loop side --------------------------------------------------------------------------

    def _on_readable(self) -> None:
        device = self._device
        if device is None:
            return
        core = self.core
        now = self.loop.time()
        read = device.read
        feed = core.feed
        for _ in range(READ_BATCH):
            packet = read()
            if packet is None:
                break
            feed(packet, now)
        self._flush()

    def kick(self) -> None:
        if not self._kicked:
            self._kicked = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._kicked = False
        core = self.core
        if core.events:
            self._dispatch()
        packets = core.drain(self.loop.time())
        if core.events:
            self._dispatch()
        device = self._device
        if device is not None and packets:
            write = device.write
            for packet in packets:
                write(packet)
        self._arm()

    def _arm(self) -> None:
        if self._closed:
            return
        t = self.core.next_timer()
        if t is None or t >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = t
        self._timer = self.loop.call_at(t, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        self.core.handle_timer(self.loop.time())
        self._flush()

    def _dispatch(self) -> None:
        evs, self.core.events = self.core.events, []
        for ev in evs:
            if isinstance(ev, events.TcpReadable):
                user = ev.conn.user
                if isinstance(user, TcpLink):
                    user.wake_read()
            elif isinstance(ev, events.TcpWritable):
                user = ev.conn.user
                if isinstance(user, TcpLink):
                    user.wake_write()
            elif isinstance(ev, events.TcpConnectionRequested):
                conn = ev.conn
                link = TcpLink(self, conn)
                conn.user = link
                self._push(Flow(Network.TCP, Destination(Network.TCP, _ip(conn.remote_ip), conn.remote_port),
                                Destination(Network.TCP, _ip(conn.local_ip), conn.local_port), link))
            elif isinstance(ev, events.TcpClosed):
                user = ev.conn.user
                if isinstance(user, TcpLink):
                    user.wake()
            elif isinstance(ev, events.UdpReadable):
                user = ev.flow.user
                if isinstance(user, UdpLink):
                    user.wake()
            elif isinstance(ev, events.UdpFlowOpened):
                flow = ev.flow
                ulink = UdpLink(self, flow)
                flow.user = ulink
                dst_ip, dst_port = flow.first_dst
                self._push(Flow(Network.UDP, Destination(Network.UDP, _ip(flow.key[0]), flow.key[1]),
                                Destination(Network.UDP, _ip(dst_ip), dst_port), ulink))
            elif isinstance(ev, events.UdpFlowClosed):
                user = ev.flow.user
                if isinstance(user, UdpLink):
                    user.closed_by_stack()

    def _push(self, flow: Flow) -> None:
        self._pending.append(flow)
        waiter = self._accept_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- the Stack contract ---------------------------------------------------------------------

    async def accept(self) -> Flow:
        while True:
            if self._pending:
                return self._pending.popleft()
            if self._closed:
                raise StackClosed("the python stack is closed")
            fut = asyncio.get_running_loop().create_future()
            self._accept_waiter = fut
            try:
                await fut
            finally:
                self._accept_waiter = None

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        device = self._device
        if device is not None:
            self.loop.remove_reader(device.fileno())
            self.core.abort_all(self.loop.time())
            self._flush()
            self._device = None
        for flow in self._pending:
            flow.link.abort()
        self._pending.clear()
        waiter = self._accept_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def stats(self) -> dict[str, Any]:
        out = dict(self.counters)
        out["tcp_open"] = len(self.core.conns)
        out["udp_open"] = len(self.core.udp)
        return out
