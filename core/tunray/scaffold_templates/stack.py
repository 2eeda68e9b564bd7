"""Template: a UDP and ICMP-echo stack as a sans-IO core under tunray's stack driver."""

from __future__ import annotations

MODULE = "stack"

SOURCE = '''\
"""The ``$name`` stack: UDP flows and ICMP echo over IPv4 and IPv6, a starting point for a real stack.

Theory of operation.  :class:`${cls}Core` is sans-IO (no asyncio, no clock, no device):
it implements :class:`tunray.stackcore.StackCore` -- packets in with :meth:`feed`, packets
out with :meth:`drain`, events naming integer handles out with :meth:`take_events`.  The
asyncio side (reading the device in batches, timers, links, the accept queue) is
tunray's :class:`~tunray.stackdriver.StackDriver`; :class:`$cls` only declares its
settings and capabilities and builds the core.  Parsing and building packets uses
:mod:`tunray.net.packet`, which every stack shares.

A datagram from an app endpoint not seen before opens a flow (:class:`~tunray.stackcore.UdpOpened`);
later datagrams from it, to any destination, join the same flow (full cone); replies are
written from whatever source the outbound names.  Echo requests to any address are
answered.  TCP is not terminated: the stack declares it yields UDP flows only, so
tunray refuses TCP-only settings for it and ``check_stack`` runs the UDP and ICMP checks.

Limits: ``max_flows`` open flows (further ones are dropped and counted),
``udp_queue_packets`` datagrams queued per flow (then new ones are dropped), flows idle
for ``udp_idle_timeout`` seconds are closed.  Nothing raises on bad input: drops are
counted by reason in :attr:`counters`.  The driver never closes the device; whoever
opened it does.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass
from typing import ClassVar

from tunray.config.schema import Int, TypedSchema, setting
from tunray.net.address import Network
from tunray.net.packet import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_UDP,
    UDP_HEADER,
    build_udp,
    echo_reply,
    parse_ip,
    pseudo_sum,
    sum_of,
    valid,
)
from tunray.stack import StackOptions
from tunray.stackcore import CoreEvent, StackCapabilities, UdpClosed, UdpOpened, UdpReadable
from tunray.stackdriver import StackDriver


@dataclass(frozen=True, slots=True)
class ${cls}Settings:
    """``stackSettings`` of this stack; each default is written once, here."""

    reply_limit: int = setting(65507, Int(min=1, max=65507), "largest UDP payload written to the app",
                               key="replyLimit")


class _Flow:
    __slots__ = ("deadline", "dst", "handle", "key", "live", "queue", "want_read")

    def __init__(self, handle: int, key: tuple[bytes, int], dst: tuple[bytes, int], deadline: float) -> None:
        self.handle = handle
        self.key = key  # the app endpoint (ip, port)
        self.dst = dst  # where its first datagram went
        self.queue: deque[tuple[bytes, bytes, int]] = deque()
        self.deadline = deadline
        self.live = True
        self.want_read = False


class ${cls}Core:
    """The sans-IO core: see :class:`tunray.stackcore.StackCore` for the rules of every method."""

    def __init__(self, options: StackOptions, settings: ${cls}Settings) -> None:
        self.options = options
        self.settings = settings
        self.counters: dict[str, int] = {}
        self._events: list[CoreEvent] = []
        self._out: list[bytes] = []
        self._by_key: dict[tuple[bytes, int], _Flow] = {}
        self._held: dict[int, _Flow] = {}
        self._timers: list[tuple[float, int]] = []  # (deadline, handle), lazily deleted
        self._last = 0

    def count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    # --- packets and time -----------------------------------------------------------------

    def feed(self, packet: bytes, now: float) -> None:
        parsed = parse_ip(packet, 0, False)
        if isinstance(parsed, str):
            self.count(parsed)
            return
        version, src, dst, proto, l4, end = parsed
        if proto == PROTO_UDP:
            self._udp(version, src, dst, packet, l4, end, now)
        elif (proto, version) in ((PROTO_ICMP, 4), (PROTO_ICMPV6, 6)):
            reply = echo_reply(version, src, dst, packet[l4:end], False)
            if isinstance(reply, str):
                self.count(reply)
            else:
                self._out.append(reply)
        else:
            self.count("not_udp")

    def _udp(self, version: int, src: bytes, dst: bytes, packet: bytes, l4: int, end: int, now: float) -> None:
        if end - l4 < UDP_HEADER.size:
            self.count("udp_truncated")
            return
        sport, dport, length, csum = UDP_HEADER.unpack_from(packet, l4)
        if length < UDP_HEADER.size or l4 + length > end:
            self.count("udp_bad_length")
            return
        body = memoryview(packet)[l4:l4 + length]
        if (csum or version == 6) and not valid(pseudo_sum(src, dst, PROTO_UDP, length) + sum_of(body)):
            self.count("udp_bad_checksum")
            return
        flow = self._by_key.get((src, sport))
        if flow is None:
            if len(self._by_key) >= self.options.max_flows:
                self.count("udp_max_flows")
                return
            self._last += 1
            flow = _Flow(self._last, (src, sport), (dst, dport), now)
            self._by_key[flow.key] = self._held[flow.handle] = flow
            self._events.append(UdpOpened(flow.handle, src, sport, dst, dport))
        self._touch(flow, now)
        if len(flow.queue) >= self.options.udp_queue_packets:
            self.count("udp_queue_full")
            return
        flow.queue.append((bytes(body[UDP_HEADER.size:]), dst, dport))
        if flow.want_read:
            flow.want_read = False
            self._events.append(UdpReadable(flow.handle))

    def _touch(self, flow: _Flow, now: float) -> None:
        flow.deadline = now + self.options.udp_idle_timeout
        heapq.heappush(self._timers, (flow.deadline, flow.handle))

    def drain(self, now: float) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def take_events(self) -> list[CoreEvent]:
        events, self._events = self._events, []
        return events

    def next_timer(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    def handle_timer(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            deadline, handle = heapq.heappop(self._timers)
            flow = self._held.get(handle)
            if flow is not None and flow.live and flow.deadline == deadline:
                self.count("udp_idle_timeout")
                self._end(flow)

    def _end(self, flow: _Flow) -> None:
        if flow.live:
            flow.live = False
            del self._by_key[flow.key]
            if flow.handle in self._held:
                self._events.append(UdpClosed(flow.handle))

    def reset_all(self, now: float) -> None:
        for flow in list(self._by_key.values()):
            self._end(flow)

    def stats(self) -> dict[str, int]:
        return {"tcp_open": 0, "udp_open": len(self._by_key)}

    # --- UDP by handle ----------------------------------------------------------------------

    def udp_recv(self, handle: int) -> tuple[bytes, bytes, int] | None:
        flow = self._held[handle]
        if flow.queue:
            return flow.queue.popleft()
        flow.want_read = flow.live
        return None

    def udp_send(self, handle: int, data: bytes, src_ip: bytes, src_port: int, now: float) -> bool:
        flow = self._held[handle]
        app_ip, app_port = flow.key
        if len(src_ip) != len(app_ip) or len(data) > self.settings.reply_limit:
            self.count("udp_reply_dropped")
            return False
        if flow.live:
            self._touch(flow, now)
        self._out.append(build_udp(4 if len(app_ip) == 4 else 6, src_ip, src_port, app_ip, app_port, data, False))
        return True

    def udp_close(self, handle: int, now: float) -> None:
        self._end(self._held.pop(handle))

    # --- TCP: this stack yields no TCP flows, so no TCP handle ever exists ----------------------

    def tcp_accept(self, handle: int, now: float) -> None:
        raise KeyError(handle)

    def tcp_read(self, handle: int, max_bytes: int, now: float) -> bytes | None:
        raise KeyError(handle)

    def tcp_write(self, handle: int, data: bytes | bytearray | memoryview, now: float) -> bool:
        raise KeyError(handle)

    def tcp_writable(self, handle: int) -> bool:
        raise KeyError(handle)

    def tcp_shutdown(self, handle: int, now: float) -> None:
        raise KeyError(handle)

    def tcp_close(self, handle: int, now: float) -> None:
        raise KeyError(handle)

    def tcp_abort(self, handle: int, now: float) -> None:
        raise KeyError(handle)


class $cls(StackDriver):
    name: ClassVar[str] = "$name"
    settings_schema: ClassVar[TypedSchema[${cls}Settings]] = TypedSchema(${cls}Settings)
    capabilities: ClassVar[StackCapabilities] = StackCapabilities(
        lazy_handshake=False, icmp_echo=True, vnet_hdr=False, tso=False, flows=frozenset({Network.UDP}),
    )

    def __init__(self, options: StackOptions) -> None:
        super().__init__(options)
        self.settings = self.settings_schema.typed(options.settings)

    def make_core(self, vnet_hdr: bool) -> ${cls}Core:
        return ${cls}Core(self.options, self.settings)
'''

TEST = '''\
"""The $name stack: its sans-IO core packet by packet, the driver on a device pair, and tunray's
stack conformance suite (``check_stack``) through a real TUN (needs root; CI runs it)."""

from __future__ import annotations

import asyncio
import ipaddress
import struct

import pytest
from tunray.device import device_pair
from tunray.link import PacketLink
from tunray.net.address import Destination, Network
from tunray.plugin.manager import PluginManager
from tunray.stack import Stack, StackOptions
from tunray.stackcore import UdpOpened, UdpReadable
from tunray.testing.stackcheck import check_stack

from $pkg.stack import $cls, ${cls}Core, ${cls}Settings

APP = Destination(Network.UDP, ipaddress.IPv4Address("10.0.0.2"), 5353)
DNS = Destination(Network.UDP, ipaddress.IPv4Address("10.0.0.53"), 53)
OTHER = Destination(Network.UDP, ipaddress.IPv4Address("192.0.2.9"), 4000)


def checksum(data: bytes) -> int:
    """RFC 1071, written independently of the stack (16-bit words, end-around carry)."""
    if len(data) % 2:
        data += b"\\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp4(src: Destination, dst: Destination, payload: bytes) -> bytes:
    assert src.ip is not None and dst.ip is not None
    udp_len = 8 + len(payload)
    pseudo = src.ip.packed + dst.ip.packed + struct.pack("!BBH", 0, 17, udp_len)
    udp = struct.pack("!HHHH", src.port, dst.port, udp_len, 0) + payload
    udp = udp[:6] + struct.pack("!H", checksum(pseudo + udp) or 0xFFFF) + udp[8:]
    header = struct.pack("!BBHHHBBH", 0x45, 0, 20 + udp_len, 1, 0, 64, 17, 0) + src.ip.packed + dst.ip.packed
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + udp


def test_registered_under_its_name() -> None:
    cls = PluginManager().registry.stacks["$name"]
    assert cls is $cls and issubclass(cls, Stack)
    assert Network.UDP in cls.capabilities.flows


def test_core_full_cone_replies_and_drops() -> None:
    core = ${cls}Core(StackOptions(udp_idle_timeout=30), ${cls}Settings())
    core.feed(udp4(APP, DNS, b"query"), 1.0)
    core.feed(udp4(APP, OTHER, b"second"), 1.0)
    (opened,) = core.take_events()
    assert isinstance(opened, UdpOpened) and (opened.src_port, opened.dst_port) == (5353, 53)
    h = opened.handle
    assert core.udp_recv(h) == (b"query", DNS.ip.packed, 53)  # type: ignore[union-attr]
    assert core.udp_recv(h) == (b"second", OTHER.ip.packed, 4000)  # type: ignore[union-attr]
    assert core.udp_recv(h) is None
    core.feed(udp4(APP, DNS, b"third"), 2.0)
    assert core.take_events() == [UdpReadable(h)]
    assert core.udp_send(h, b"answer", OTHER.ip.packed, OTHER.port, 2.0)  # type: ignore[union-attr]
    (reply,) = core.drain(2.0)
    assert checksum(reply[:20]) == 0 and (reply[12:16], reply[16:20]) == (
        OTHER.ip.packed, APP.ip.packed)  # type: ignore[union-attr]
    assert checksum(reply[12:20] + struct.pack("!BBH", 0, 17, len(reply) - 20) + reply[20:]) == 0
    core.feed(b"\\x45garbage", 2.0)
    core.feed(udp4(APP, DNS, b"x")[:-1] + b"y", 2.0)  # payload changed under its checksum
    assert core.counters == {"ip_truncated": 1, "udp_bad_checksum": 1}
    assert core.next_timer() is not None
    core.handle_timer(100.0)
    assert core.stats()["udp_open"] == 0 and core.counters["udp_idle_timeout"] == 1


async def test_driver_round_trip_on_a_device_pair_leaves_the_device_open() -> None:
    mine, kernel = device_pair()
    stack = $cls(StackOptions())
    await stack.attach(mine)
    try:
        kernel.write(udp4(APP, DNS, b"query"))
        flow = await asyncio.wait_for(stack.accept(), 2)
        assert (flow.network, flow.source, flow.destination) == (Network.UDP, APP, DNS)
        link = flow.link
        assert isinstance(link, PacketLink)
        packet = await asyncio.wait_for(link.recv(), 2)
        assert packet is not None and (packet.data, packet.peer) == (b"query", DNS)
        link.send(b"answer", OTHER)
        for _ in range(200):
            if (reply := kernel.read()) is not None:
                break
            await asyncio.sleep(0.005)
        assert reply is not None and reply[28:] == b"answer"
        await link.aclose()
        assert await link.recv() is None
    finally:
        await stack.aclose()
        assert mine.fileno() >= 0, "the stack must not close the device: its opener does"
        mine.close()
        kernel.close()


@pytest.mark.root  # tunray's pytest plugin skips it without root, except on CI
async def test_check_stack() -> None:
    ran = await check_stack($cls)
    assert set(ran) == {"udp_full_cone", "icmp_echo"}
'''

FILES = {"$pkg/stack.py": SOURCE, "tests/test_${name_id}.py": TEST}
