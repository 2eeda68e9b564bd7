"""The one asyncio driver for sans-IO stack cores (:class:`~tunray.stackcore.StackCore`).

A stack plugin subclasses :class:`StackDriver`, declares ``name``, ``capabilities`` and
``settings_schema``, and implements :meth:`StackDriver.make_core`; the driver does the
rest: reading and writing the device, timers, links, backpressure and the accept queue.

Theory of operation.

* **Reading.**  One ``loop.add_reader`` callback reads up to :data:`READ_BATCH` packets,
  feeds each to the core, then flushes once: the whole batch costs one drain, one event
  dispatch and one timer check, so the core can coalesce ACKs.  No hook, task or future
  per packet.
* **Flushing.**  A flush dispatches events, drains the core, dispatches what the drain
  raised, writes every packet and re-arms the timer.  Link operations ask for a flush
  with :meth:`StackDriver.kick` (at most one ``call_soon`` per loop iteration, however
  many links changed).
* **Timer.**  One ``call_at`` handle follows ``core.next_timer()``; it is only re-armed
  when the deadline moves earlier (a late-moving deadline costs nothing, an early wakeup
  just runs ``handle_timer`` and re-arms).
* **Links.**  A link never owns a task: it parks one future for its reader and one for its
  writer when the core said "would block", and the event that follows resolves it.  The
  driver maps handles to links in one dict; each link releases its handle exactly once
  (``aclose``/``abort``), after which it never calls the core again.
* **Ownership.**  The driver never closes the device: whoever opened it (the TUN inbound,
  the test harness) closes it after :meth:`StackDriver.aclose`, which stops reading,
  resets every flow (the RSTs are written first) and wakes every waiter.

A reset (RST from the app, a timeout, :meth:`CoreByteLink.abort`) ends a link:
``read`` returns the bytes received before it, then raises
:class:`~tunray.link.LinkClosed` (a :class:`~tunray.bytestream.StreamReset`; after this
side's own ``abort`` it returns ``b""``); ``write`` raises :class:`~tunray.link.LinkClosed`;
:attr:`CoreByteLink.reset` tells a reset from a clean end.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

from loguru import logger

from tunray.device import PacketDevice
from tunray.link import ByteLink, LinkClosed, Packet, PacketLink
from tunray.net.address import Destination, Network
from tunray.stack import Flow, Stack, StackClosed, StackOptions
from tunray.stackcore import (
    SendClosed,
    StackCore,
    TcpClosed,
    TcpOpened,
    TcpPeerEof,
    TcpReadable,
    TcpReset,
    TcpWritable,
    UdpClosed,
    UdpOpened,
    UdpReadable,
)

READ_BATCH = 512  # packets per wakeup before other callbacks get a turn

#: Counters that mean a resource limit was hit, with the setting that governs it: the first
#: time one appears the driver logs one line (the counter keeps counting in ``stats()``).
LIMITS = {
    "tcp_max_flows": "maxFlows: new TCP connections are refused (RST)",
    "udp_max_flows": "maxFlows: new UDP flows are dropped",
    "udp_lru_evicted": "maxFlows: the least recently used UDP flows are evicted",
    "tcp_syn_cookies_sent": "maxHalfOpen/maxHalfOpenPerSource: SYNs are answered with SYN cookies",
    "tcp_half_open_evicted": "maxHalfOpen: the oldest (or stale) half-open connections are dropped",
    "tcp_half_open_dropped": "maxHalfOpen/maxHalfOpenPerSource: SYNs beyond a source's share are dropped",
    "udp_queue_full": "a UDP flow's queue: datagrams are dropped",
    "tcp_buffer_budget_full": "maxBufferedBytes: receive windows stop opening until the outbounds read",
    "udp_buffer_budget_full": "maxBufferedBytes: datagrams from apps are dropped",
}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(raw: bytes) -> IPAddress:
    return ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw)


def _wake(fut: asyncio.Future[None] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


class StackDriver(Stack):
    """A :class:`~tunray.stack.Stack` made of a sans-IO core and this driver.

    Subclasses set ``name`` (and ``capabilities``, ``settings_schema``) and implement
    :meth:`make_core`.  ``self.counters`` is handed to the core, so its drop counters
    are the stack's.
    """

    def __init__(self, options: StackOptions) -> None:
        super().__init__(options)
        self.core: StackCore | None = None  # set by attach()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._device: PacketDevice | None = None
        self._links: dict[int, CoreByteLink | CorePacketLink] = {}
        self._pending: collections.deque[Flow] = collections.deque()
        self._accept_waiter: asyncio.Future[None] | None = None
        self._refusing = False
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._kicked = False
        self._known_counters = 0  # len(counters) when limits were last looked for
        self._limits_logged: set[str] = set()

    @abstractmethod
    def make_core(self, vnet_hdr: bool) -> StackCore:
        """Build the core for a device that does (or does not) carry virtio-net headers.

        Called once, by :meth:`attach`; *vnet_hdr* is only true if ``capabilities.vnet_hdr`` is.
        """

    def time(self) -> float:
        assert self.loop is not None
        return self.loop.time()

    async def attach(self, device: PacketDevice) -> None:
        if self._device is not None or self._closed:
            raise RuntimeError(f"{type(self).__name__}.attach called twice or after aclose")
        vnet = device.offloads.vnet_hdr
        if vnet and not self.capabilities.vnet_hdr:
            raise ValueError(f"stack {self.name!r} cannot read virtio-net headers: open the device without offload")
        self.loop = asyncio.get_running_loop()
        core = self.make_core(vnet)
        core.counters = self.counters
        self.core = core
        self._device = device
        self.loop.add_reader(device.fileno(), self._on_readable)

    # --- the loop side --------------------------------------------------------------------------

    def _on_readable(self) -> None:
        device = self._device
        core = self.core
        if device is None or core is None:
            return
        assert self.loop is not None
        now = self.loop.time()
        read = device.read
        feed = core.feed
        try:
            for _ in range(READ_BATCH):
                packet = read()
                if packet is None:
                    break
                feed(packet, now)
        except OSError as exc:  # not "would block": the device is gone (DeviceError)
            self._fail(exc)
            return
        self._flush()

    def kick(self) -> None:
        """Ask for one flush on the next loop iteration (links call this after changing the core)."""
        if not self._kicked:
            self._kicked = True
            assert self.loop is not None
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._kicked = False
        core = self.core
        if core is None:
            return
        assert self.loop is not None
        evs = core.take_events()
        if evs:
            self._dispatch(evs)
        packets = core.drain(self.loop.time())
        evs = core.take_events()
        if evs:
            self._dispatch(evs)
        device = self._device
        if device is not None and packets:
            write = device.write
            try:
                for packet in packets:
                    write(packet)
            except OSError as exc:
                self._fail(exc)
                return
        if len(self.counters) != self._known_counters:  # a new counter: maybe a limit was hit
            self._log_limits()
        self._arm()

    def _log_limits(self) -> None:
        self._known_counters = len(self.counters)
        for name, what in LIMITS.items():
            if name in self.counters and name not in self._limits_logged:
                self._limits_logged.add(name)
                logger.warning("stack {}: limit reached: {} (counted as {})", self.name, what, name)

    def _arm(self) -> None:
        core = self.core
        if self._closed or core is None:
            return
        t = core.next_timer()
        if t is None or t >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = t
        assert self.loop is not None
        self._timer = self.loop.call_at(t, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        if self.core is None or self.loop is None:
            return
        self.core.handle_timer(self.loop.time())
        self._flush()

    def _dispatch(self, evs: Any) -> None:
        links = self._links
        for ev in evs:
            kind = type(ev)
            if kind is TcpReadable or kind is TcpPeerEof:
                link = links.get(ev.handle)
                if link is not None:
                    _wake(link._read_waiter)
            elif kind is TcpWritable:
                link = links.get(ev.handle)
                if type(link) is CoreByteLink:
                    _wake(link._write_waiter)
            elif kind is TcpOpened:
                tlink = CoreByteLink(self, ev.handle, not ev.pending)
                links[ev.handle] = tlink
                self._push(Flow(Network.TCP, Destination(Network.TCP, _ip(ev.src_ip), ev.src_port),
                                Destination(Network.TCP, _ip(ev.dst_ip), ev.dst_port), tlink))
            elif kind is TcpClosed or kind is TcpReset:
                link = links.get(ev.handle)
                if type(link) is CoreByteLink:
                    link._ended(kind is TcpReset)
            elif kind is UdpReadable:
                link = links.get(ev.handle)
                if link is not None:
                    _wake(link._read_waiter)
            elif kind is UdpOpened:
                ulink = CorePacketLink(self, ev.handle, len(ev.src_ip) == 4)
                links[ev.handle] = ulink
                self._push(Flow(Network.UDP, Destination(Network.UDP, _ip(ev.src_ip), ev.src_port),
                                Destination(Network.UDP, _ip(ev.dst_ip), ev.dst_port), ulink))
            elif kind is UdpClosed:
                link = links.get(ev.handle)
                if type(link) is CorePacketLink:
                    link._ended()

    def _fail(self, exc: OSError) -> None:
        """The device failed for good: record why, stop reading, end every flow, close.

        The owner (the TUN inbound) sees :attr:`failure` once ``accept`` raises
        :class:`StackClosed`, and reports it; nothing is written to the device any more.
        """
        if self.failure is not None or self._closed:
            return
        self.failure = exc
        self.count("device_failed")
        device, core, loop = self._device, self.core, self.loop
        self._device = None  # no more reads or writes
        if device is not None and loop is not None:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(device.fileno())
        if core is not None and loop is not None:
            core.reset_all(loop.time())
            core.drain(loop.time())  # the RSTs have nowhere to go
            evs = core.take_events()
            if evs:
                self._dispatch(evs)
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for flow in self._pending:
            flow.link.abort()
        self._pending.clear()
        _wake(self._accept_waiter)

    def _push(self, flow: Flow) -> None:
        if self._refusing:
            flow.link.abort()  # shutting down: a new SYN is answered with a RST
            return
        self._pending.append(flow)
        _wake(self._accept_waiter)

    def stop_accepting(self) -> None:
        self._refusing = True
        for flow in self._pending:
            flow.link.abort()
        self._pending.clear()

    def _forget(self, handle: int) -> None:
        self._links.pop(handle, None)

    # --- the Stack contract ---------------------------------------------------------------------

    async def accept(self) -> Flow:
        while True:
            if self._pending:
                return self._pending.popleft()
            if self._closed:
                raise StackClosed(f"the {self.name} stack is closed")
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
        if device is not None and self.core is not None and self.loop is not None:
            self.loop.remove_reader(device.fileno())
            self.core.reset_all(self.loop.time())
            self._flush()
            self._device = None
        for flow in self._pending:
            flow.link.abort()
        self._pending.clear()
        _wake(self._accept_waiter)

    def stats(self) -> dict[str, Any]:
        """Counters (every limit's counter, hit or not, see :data:`LIMITS`) and the core's gauges."""
        out: dict[str, Any] = dict.fromkeys(LIMITS, 0)
        out.update(self.counters)
        if self.core is not None:
            out.update(self.core.stats())
        return out


class _HandleLink:
    """What both link kinds hold: the driver, its core, one handle, and the reader's future."""

    __slots__ = ("_closed", "_core", "_driver", "_gone", "_handle", "_read_waiter", "_time")

    def __init__(self, driver: StackDriver, handle: int) -> None:
        assert driver.core is not None and driver.loop is not None
        self._driver = driver
        self._core = driver.core
        self._time = driver.loop.time
        self._handle = handle
        self._closed = False  # released by aclose/abort: never touch the core again
        self._gone = False  # the core ended the connection or flow
        self._read_waiter: asyncio.Future[None] | None = None

    @property
    def handle(self) -> int:
        return self._handle


class CoreByteLink(_HandleLink, ByteLink):
    """One TCP connection of a core, as the outbound sees it."""

    __slots__ = ("_accepted", "_reset", "_withdrawn", "_write_waiter")

    def __init__(self, driver: StackDriver, handle: int, accepted: bool) -> None:
        super().__init__(driver, handle)
        self._accepted = accepted
        self._reset = False
        self._write_waiter: asyncio.Future[None] | None = None
        self._withdrawn: Callable[[], None] | None = None

    def on_withdrawn(self, callback: Callable[[], None]) -> None:
        if not self._accepted and not self._gone:
            self._withdrawn = callback

    @property
    def reset(self) -> bool:
        """True if the flow ended by a reset (from the app, a timeout, or :meth:`abort`)."""
        return self._reset

    @property
    def accepted(self) -> bool:
        return self._accepted or self._gone

    async def read(self, max_bytes: int = 65536) -> bytes:
        driver = self._driver
        while True:
            if self._closed:
                return b""
            data = self._core.tcp_read(self._handle, max_bytes, self._time())
            if data is not None:
                if data:
                    driver.kick()
                elif self._gone and self._reset:  # the app's RST, after the bytes before it
                    raise LinkClosed("the app reset the connection")
                return data
            fut = asyncio.get_running_loop().create_future()
            self._read_waiter = fut
            try:
                await fut
            finally:
                self._read_waiter = None

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed or self._gone:
            raise LinkClosed("the flow is closed")
        if not data:
            return
        driver = self._driver
        try:
            below = self._core.tcp_write(self._handle, data, self._time())
        except SendClosed:
            raise LinkClosed("the flow is closed") from None
        driver.kick()
        while not below:
            fut = asyncio.get_running_loop().create_future()
            self._write_waiter = fut
            try:
                await fut
            finally:
                self._write_waiter = None
            if self._closed or self._gone:
                raise LinkClosed("the flow was reset")
            below = self._core.tcp_writable(self._handle)

    async def write_eof(self) -> None:
        if self._closed or self._gone:
            return
        self._core.tcp_shutdown(self._handle, self._time())
        self._driver.kick()

    async def accept(self) -> None:
        if self._gone and self._reset and not self._closed:
            raise LinkClosed("the app reset the connection before it was accepted")
        if not self._accepted and not self._closed:
            self._accepted = True
            self._core.tcp_accept(self._handle, self._time())
            self._driver.kick()

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._gone:
            self._reset = True
        self._core.tcp_abort(self._handle, self._time())
        self._driver._forget(self._handle)
        self._driver.kick()
        self._wake()

    async def aclose(self) -> None:
        if self._closed:
            return
        if not self._accepted and not self._gone:
            self.abort()  # a SYN never answered is refused, not half-opened
            return
        self._closed = True
        self._core.tcp_close(self._handle, self._time())
        self._driver._forget(self._handle)
        self._driver.kick()
        self._wake()

    # --- called by the driver ---------------------------------------------------------------

    def _ended(self, reset: bool) -> None:
        self._gone = True
        self._reset = self._reset or reset
        self._wake()
        withdrawn, self._withdrawn = self._withdrawn, None
        if withdrawn is not None and reset and not self._accepted:
            withdrawn()  # the SYN was reset or evicted before accept: stop its dial

    def _wake(self) -> None:
        _wake(self._read_waiter)
        _wake(self._write_waiter)


class CorePacketLink(_HandleLink, PacketLink):
    """One UDP flow (one app source endpoint) of a core."""

    __slots__ = ("_last", "_v4")

    def __init__(self, driver: StackDriver, handle: int, v4: bool) -> None:
        super().__init__(driver, handle)
        self._v4 = v4
        self._last: tuple[bytes, int, Destination] | None = None

    async def recv(self) -> Packet | None:
        while True:
            if self._closed:
                return None
            item = self._core.udp_recv(self._handle)
            if item is not None:
                payload, ip, port = item
                last = self._last
                if last is None or last[0] != ip or last[1] != port:
                    last = self._last = (ip, port, Destination(Network.UDP, _ip(ip), port))
                return Packet(payload, last[2])
            if self._gone:
                return None
            fut = asyncio.get_running_loop().create_future()
            self._read_waiter = fut
            try:
                await fut
            finally:
                self._read_waiter = None

    def send(self, data: bytes, source: Destination) -> None:
        if self._closed or self._gone:
            raise LinkClosed("the UDP flow is closed")
        host = source.host
        if isinstance(host, str):
            self._driver.count("udp_reply_from_domain")
            return
        if self._v4 and isinstance(host, ipaddress.IPv6Address) and host.ipv4_mapped:
            host = host.ipv4_mapped
        elif not self._v4 and isinstance(host, ipaddress.IPv4Address):
            host = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + host.packed)
        if self._core.udp_send(self._handle, data, host.packed, source.port, self._time()):
            self._driver.kick()

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._core.udp_close(self._handle, self._time())
        self._driver._forget(self._handle)
        self._driver.kick()
        _wake(self._read_waiter)

    async def aclose(self) -> None:
        self.abort()

    def _ended(self) -> None:
        self._gone = True
        _wake(self._read_waiter)
