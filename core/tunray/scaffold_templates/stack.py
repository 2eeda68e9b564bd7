"""Template: a minimal UDP-over-IPv4 stack and tests of the stack contract on a device pair."""

from __future__ import annotations

MODULE = "stack"

SOURCE = '''\
"""The ``$name`` stack: a minimal UDP-over-IPv4 stack, a starting point for a real one.

Theory of operation.  The stack reads packets from its device with
``loop.add_reader`` (no task per packet).  An IPv4/UDP packet from an app endpoint
not seen before opens a flow: a :class:`~tunray.stack.Flow` with a
:class:`~tunray.link.PacketLink` is queued for :meth:`accept`.  Later packets from
the same endpoint, to any destination, go to the same link (full cone); what the
outbound ``send``s on it is written back as IPv4/UDP from the given source.

Everything else (TCP, IPv6, fragments, malformed packets) is dropped and counted in
:attr:`counters`; nothing raises out of the stack.  Limits: ``max_flows`` open
flows (then new ones are dropped), ``udp_queue_packets`` datagrams queued per flow
(then the newest is dropped).  ``aclose`` ends every flow and closes the device.
"""

from __future__ import annotations

import asyncio
import ipaddress
import struct

from tunray.config.schema import Field, Int, Schema
from tunray.device import PacketDevice
from tunray.link import Packet, PacketLink
from tunray.net.address import Destination, Network
from tunray.stack import Flow, Stack, StackClosed, StackOptions

_IPV4 = struct.Struct("!BBHHHBBH4s4s")  # version/IHL, TOS, total length, id, flags/fragment, TTL, proto, csum, src, dst
_UDP = struct.Struct("!HHHH")  # source port, destination port, length, checksum
_UDP_PROTO = 17
_TCP_PROTO = 6


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of *data*."""
    if len(data) % 2:
        data += b"\\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build_udp4(src: Destination, dst: Destination, payload: bytes, ttl: int = 64) -> bytes:
    """One IPv4/UDP packet with both checksums filled in."""
    assert src.ip is not None and dst.ip is not None
    s, d = src.ip.packed, dst.ip.packed
    length = _UDP.size + len(payload)
    pseudo = s + d + struct.pack("!BBH", 0, _UDP_PROTO, length)
    csum = checksum(pseudo + _UDP.pack(src.port, dst.port, length, 0) + payload) or 0xFFFF
    udp = _UDP.pack(src.port, dst.port, length, csum) + payload
    header = _IPV4.pack(0x45, 0, _IPV4.size + len(udp), 0, 0x4000, ttl, _UDP_PROTO, 0, s, d)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + udp


class _FlowLink(PacketLink):
    __slots__ = ("_app", "_closed", "_queue", "_stack")

    def __init__(self, stack: $cls, app: Destination, size: int) -> None:
        self._stack = stack
        self._app = app
        self._queue: asyncio.Queue[Packet | None] = asyncio.Queue(size)
        self._closed = False

    def deliver(self, packet: Packet) -> None:
        try:
            self._queue.put_nowait(packet)
        except asyncio.QueueFull:
            self._stack.count("drop_udp_queue_full")

    async def recv(self) -> Packet | None:
        if self._closed:
            return None
        packet = await self._queue.get()
        if packet is None:
            self._closed = True
        return packet

    def send(self, data: bytes, source: Destination) -> None:
        if not self._closed:
            self._stack.emit(source, self._app, data)

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            self._stack.forget(self._app)
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(None)  # wake a pending recv

    async def aclose(self) -> None:
        self.abort()


class $cls(Stack):
    name = "$name"
    settings_schema = Schema(
        Field("ttl", Int(min=1, max=255), default=64, doc="TTL of the packets the stack writes"),
    )

    def __init__(self, options: StackOptions) -> None:
        super().__init__(options)
        self._device: PacketDevice | None = None
        self._flows: dict[Destination, _FlowLink] = {}
        self._new: asyncio.Queue[Flow | None] = asyncio.Queue()
        self._closed = False
        self._ttl: int = options.settings.get("ttl", 64)

    async def attach(self, device: PacketDevice) -> None:
        if self._closed:
            raise StackClosed("stack closed")
        self._device = device
        asyncio.get_running_loop().add_reader(device.fileno(), self._readable)

    async def accept(self) -> Flow:
        if self._closed:
            raise StackClosed("stack closed")
        flow = await self._new.get()
        if flow is None:
            self._new.put_nowait(None)  # let every other waiter see the close too
            raise StackClosed("stack closed")
        return flow

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for link in list(self._flows.values()):
            link.abort()
        if self._device is not None:
            asyncio.get_running_loop().remove_reader(self._device.fileno())
            self._device.close()
        self._new.put_nowait(None)

    # --- data path ---------------------------------------------------------------------

    def _readable(self) -> None:
        device = self._device
        assert device is not None
        while (packet := device.read()) is not None:
            self._input(packet)

    def _input(self, packet: bytes) -> None:
        if not packet or packet[0] >> 4 != 4:
            self.count("drop_not_ipv4")
            return
        if len(packet) < _IPV4.size:
            self.count("drop_malformed")
            return
        vihl, _tos, total, _id, frag, _ttl, proto, _csum, src, dst = _IPV4.unpack_from(packet)
        ihl = (vihl & 0x0F) * 4
        if ihl < _IPV4.size or total > len(packet) or total < ihl + _UDP.size or checksum(packet[:ihl]):
            self.count("drop_malformed")
            return
        if frag & 0x3FFF:
            self.count("drop_fragment")
            return
        if proto != _UDP_PROTO:
            self.count("drop_tcp" if proto == _TCP_PROTO else "drop_protocol")
            return
        sport, dport, length, _ = _UDP.unpack_from(packet, ihl)
        if length < _UDP.size or ihl + length > total:
            self.count("drop_malformed")
            return
        app = Destination(Network.UDP, ipaddress.IPv4Address(src), sport)
        target = Destination(Network.UDP, ipaddress.IPv4Address(dst), dport)
        payload = bytes(packet[ihl + _UDP.size : ihl + length])
        link = self._flows.get(app)
        if link is None:
            if len(self._flows) >= self.options.max_flows:
                self.count("drop_max_flows")
                return
            link = self._flows[app] = _FlowLink(self, app, self.options.udp_queue_packets)
            self.count("flows_opened")
            self._new.put_nowait(Flow(Network.UDP, app, target, link))
        link.deliver(Packet(payload, target))

    def emit(self, source: Destination, app: Destination, data: bytes) -> None:
        if self._device is None or self._closed or source.ip is None or source.ip.version != 4:
            self.count("drop_reply")
            return
        if not self._device.write(build_udp4(source, app, data, self._ttl)):
            self.count("drop_device_full")

    def forget(self, app: Destination) -> None:
        self._flows.pop(app, None)
'''

TEST = '''\
"""The $name stack on an in-memory device pair: the stack contract, packet by packet.

``device_pair()`` gives two connected devices; the stack reads one, the test plays
the kernel on the other.
"""

from __future__ import annotations

import asyncio
import ipaddress
import struct

import pytest
from tunray.device import FdDevice, device_pair
from tunray.link import PacketLink
from tunray.net.address import Destination, Network
from tunray.plugin.manager import PluginManager
from tunray.stack import Stack, StackClosed, StackOptions

from $pkg.stack import $cls, checksum

APP = Destination(Network.UDP, ipaddress.IPv4Address("10.0.0.2"), 5353)
DNS = Destination(Network.UDP, ipaddress.IPv4Address("10.0.0.53"), 53)
OTHER = Destination(Network.UDP, ipaddress.IPv4Address("192.0.2.9"), 4000)


def udp4(src: Destination, dst: Destination, payload: bytes) -> bytes:
    """An IPv4/UDP packet built independently of the stack's own builder."""
    assert src.ip is not None and dst.ip is not None
    udp_len = 8 + len(payload)
    pseudo = src.ip.packed + dst.ip.packed + struct.pack("!BBH", 0, 17, udp_len)
    udp = struct.pack("!HHHH", src.port, dst.port, udp_len, 0) + payload
    ucsum = checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", ucsum) + udp[8:]
    header = struct.pack("!BBHHHBBH", 0x45, 0, 20 + udp_len, 1, 0, 64, 17, 0) + src.ip.packed + dst.ip.packed
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + udp


async def read_packet(device: FdDevice, wait: float = 2.0) -> bytes:
    loop = asyncio.get_running_loop()
    end = loop.time() + wait
    while (packet := device.read()) is None:
        assert loop.time() < end, "no packet from the stack"
        await asyncio.sleep(0.005)
    return packet


def test_registered_under_its_name() -> None:
    assert PluginManager().registry.stacks["$name"] is $cls
    assert issubclass($cls, Stack)


async def test_udp_flow_round_trip_and_full_cone() -> None:
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
        # Same app endpoint, another destination: the same flow (full cone).
        kernel.write(udp4(APP, OTHER, b"second"))
        packet = await asyncio.wait_for(link.recv(), 2)
        assert packet is not None and (packet.data, packet.peer) == (b"second", OTHER)
        # A reply from any source reaches the app from that source, checksums valid.
        link.send(b"answer", OTHER)
        reply = await read_packet(kernel)
        assert reply[0] == 0x45 and reply[9] == 17 and checksum(reply[:20]) == 0
        assert (reply[12:16], reply[16:20]) == (OTHER.ip.packed, APP.ip.packed)  # type: ignore[union-attr]
        assert struct.unpack("!HH", reply[20:24]) == (OTHER.port, APP.port) and reply[28:] == b"answer"
        pseudo = reply[12:20] + struct.pack("!BBH", 0, 17, len(reply) - 20)
        assert checksum(pseudo + reply[20:]) == 0, "bad UDP checksum"
        await link.aclose()
        assert await link.recv() is None
    finally:
        await stack.aclose()
        kernel.close()


async def test_bad_packets_are_counted_never_raised() -> None:
    mine, kernel = device_pair()
    stack = $cls(StackOptions())
    await stack.attach(mine)
    try:
        good = udp4(APP, DNS, b"x")
        kernel.write(b"\\x45garbage")
        kernel.write(good[:9] + b"\\x06" + good[10:])  # TCP (header checksum now wrong too)
        kernel.write(b"\\x60" + bytes(47))  # IPv6
        kernel.write(good)
        flow = await asyncio.wait_for(stack.accept(), 2)
        assert flow.source == APP
        stats = stack.stats()
        assert stats.get("drop_malformed", 0) + stats.get("drop_tcp", 0) == 2
        assert stats.get("drop_not_ipv4") == 1 and stats.get("flows_opened") == 1
        await flow.link.aclose()
    finally:
        await stack.aclose()
        kernel.close()


async def test_max_flows_is_enforced() -> None:
    mine, kernel = device_pair()
    stack = $cls(StackOptions(max_flows=1))
    await stack.attach(mine)
    try:
        kernel.write(udp4(APP, DNS, b"1"))
        kernel.write(udp4(APP.with_port(5354), DNS, b"2"))
        flow = await asyncio.wait_for(stack.accept(), 2)
        for _ in range(100):
            if stack.stats().get("drop_max_flows"):
                break
            await asyncio.sleep(0.01)
        assert stack.stats().get("drop_max_flows") == 1
        await flow.link.aclose()
    finally:
        await stack.aclose()
        kernel.close()


async def test_aclose_ends_accept_and_is_idempotent() -> None:
    mine, kernel = device_pair()
    stack = $cls(StackOptions())
    await stack.attach(mine)
    waiter = asyncio.create_task(stack.accept())
    await asyncio.sleep(0)
    await stack.aclose()
    with pytest.raises(StackClosed):
        await waiter
    with pytest.raises(StackClosed):
        await stack.accept()
    await stack.aclose()
    assert [flow async for flow in stack] == []
    assert mine.fileno() == -1, "aclose must release the device"
    kernel.close()
'''

FILES = {"$pkg/stack.py": SOURCE, "tests/test_${name_id}.py": TEST}
