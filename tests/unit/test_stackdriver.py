"""tunray.stackdriver against a scripted StackCore: batching, timers, links, backpressure, handles.

The core here is a small in-memory implementation of the protocol whose state the test
steers (what is readable, when the send buffer drains, resets), so each driver rule is
checked on its own; the real cores are checked through the kernel by ``check_stack``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import deque
from typing import Any, ClassVar

import pytest
from tunray import hookimpl
from tunray.device import DeviceError, device_pair
from tunray.link import ByteLink, LinkClosed, PacketLink
from tunray.net.address import Destination, Network
from tunray.outbound import Outbound
from tunray.stack import StackClosed, StackOptions
from tunray.stackcore import (
    CoreEvent,
    SendClosed,
    StackCapabilities,
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
from tunray.stackdriver import CoreByteLink, StackDriver
from tunray.testing.harness import driver_of, running

APP, REMOTE = bytes((10, 0, 0, 2)), bytes((192, 0, 2, 1))
HIGH = 100


class Conn:
    def __init__(self) -> None:
        self.rcv = bytearray()
        self.eof = False
        self.ended = False
        self.snd = 0
        self.shut = False
        self.want_read = self.want_write = False


class ScriptedCore:
    """Implements :class:`~tunray.stackcore.StackCore`; ``log`` records every driver call."""

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}
        self.events: list[CoreEvent] = []
        self.out: list[bytes] = []
        self.tcp: dict[int, Conn] = {}
        self.udp: dict[int, deque[tuple[bytes, bytes, int]]] = {}
        self.udp_live: set[int] = set()
        self.udp_sent: list[tuple[int, bytes, bytes, int]] = []
        self.log: list[tuple[str, int]] = []
        self.fed: list[bytes] = []
        self.drains = 0
        self.timer: float | None = None
        self.timers_run: list[float] = []
        self.n = 0

    # script
    def open_tcp(self, pending: bool) -> int:
        self.n += 1
        self.tcp[self.n] = Conn()
        self.events.append(TcpOpened(self.n, APP, 40000 + self.n, REMOTE, 443, pending))
        return self.n

    def deliver(self, h: int, data: bytes = b"", eof: bool = False) -> None:
        c = self.tcp[h]
        c.rcv += data
        if data and c.want_read:
            c.want_read = False
            self.events.append(TcpReadable(h))
        if eof:
            c.eof = True
            self.events.append(TcpPeerEof(h))

    def acked(self, h: int, n: int) -> None:
        c = self.tcp[h]
        c.snd -= n
        if c.want_write and c.snd <= HIGH:
            c.want_write = False
            self.events.append(TcpWritable(h))

    def end(self, h: int, reset: bool) -> None:
        self.tcp[h].ended = True
        self.events.append(TcpReset(h) if reset else TcpClosed(h))

    # protocol
    def feed(self, packet: bytes, now: float) -> None:
        self.fed.append(packet)
        if packet.startswith(b"open"):
            self.open_tcp(pending=False)

    def drain(self, now: float) -> list[bytes]:
        self.drains += 1
        out, self.out = self.out, []
        return out

    def take_events(self) -> list[CoreEvent]:
        evs, self.events = self.events, []
        return evs

    def next_timer(self) -> float | None:
        return self.timer

    def handle_timer(self, now: float) -> None:
        self.timers_run.append(now)
        self.timer = None
        self.out.append(b"timer fired")

    def reset_all(self, now: float) -> None:
        self.log.append(("reset_all", 0))
        for h, c in self.tcp.items():
            if not c.ended:
                self.end(h, True)
        for h in list(self.udp_live):
            self.udp_live.discard(h)
            self.events.append(UdpClosed(h))

    def stats(self) -> dict[str, int]:
        return {"tcp_open": sum(not c.ended for c in self.tcp.values()), "udp_open": len(self.udp_live)}

    def tcp_accept(self, handle: int, now: float) -> None:
        self.tcp[handle]
        self.log.append(("accept", handle))

    def tcp_read(self, handle: int, max_bytes: int, now: float) -> bytes | None:
        c = self.tcp[handle]
        if c.rcv:
            data = bytes(c.rcv[:max_bytes])
            del c.rcv[:max_bytes]
            return data
        if c.eof or c.ended:
            return b""
        c.want_read = True
        return None

    def tcp_write(self, handle: int, data: bytes | bytearray | memoryview, now: float) -> bool:
        c = self.tcp[handle]
        if c.ended or c.shut:
            raise SendClosed("closed")
        c.snd += len(data)
        return self.tcp_writable(handle)

    def tcp_writable(self, handle: int) -> bool:
        c = self.tcp[handle]
        if not c.ended and c.snd > HIGH:
            c.want_write = True
            return False
        return True

    def tcp_shutdown(self, handle: int, now: float) -> None:
        self.tcp[handle].shut = True
        self.log.append(("shutdown", handle))

    def tcp_close(self, handle: int, now: float) -> None:
        del self.tcp[handle]  # released: a second use is a KeyError
        self.log.append(("close", handle))

    def tcp_abort(self, handle: int, now: float) -> None:
        del self.tcp[handle]
        self.log.append(("abort", handle))

    def udp_recv(self, handle: int) -> tuple[bytes, bytes, int] | None:
        q = self.udp[handle]
        return q.popleft() if q else None

    def udp_send(self, handle: int, data: bytes, src_ip: bytes, src_port: int, now: float) -> bool:
        self.udp[handle]
        self.udp_sent.append((handle, data, src_ip, src_port))
        return True

    def udp_close(self, handle: int, now: float) -> None:
        del self.udp[handle]
        self.log.append(("udp_close", handle))


class ScriptedStack(StackDriver):
    name: ClassVar[str] = "scripted"
    capabilities: ClassVar[StackCapabilities] = StackCapabilities()

    def make_core(self, vnet_hdr: bool) -> ScriptedCore:
        return ScriptedCore()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def started() -> tuple[ScriptedStack, ScriptedCore, asyncio.AbstractEventLoop]:
    mine, kernel = device_pair()
    stack = ScriptedStack(StackOptions())
    await stack.attach(mine)
    assert isinstance(stack.core, ScriptedCore)
    stack._test_devices = (mine, kernel)  # type: ignore[attr-defined]
    return stack, stack.core, asyncio.get_running_loop()


async def stop(stack: ScriptedStack) -> None:
    await stack.aclose()
    mine, kernel = stack._test_devices  # type: ignore[attr-defined]
    assert mine.fileno() >= 0, "the driver must not close the device"
    mine.close()
    kernel.close()


async def test_a_batch_of_packets_is_fed_then_drained_once() -> None:
    stack, core, _ = await started()
    try:
        _, kernel = stack._test_devices  # type: ignore[attr-defined]
        core.out.append(b"reply")
        for i in range(50):
            kernel.write(b"pkt%d" % i)
        kernel.write(b"open")
        flow = await asyncio.wait_for(stack.accept(), 2)
        assert core.fed == [b"pkt%d" % i for i in range(50)] + [b"open"]
        assert core.drains <= 3, f"{core.drains} drains for 51 packets: not batched"
        assert kernel.read() == b"reply"
        assert flow.network is Network.TCP and isinstance(flow.link, ByteLink) and flow.link.accepted
        assert flow.source == Destination(Network.TCP, ipaddress.ip_address("10.0.0.2"), 40001)
        assert flow.destination == Destination(Network.TCP, ipaddress.ip_address("192.0.2.1"), 443)
    finally:
        await stop(stack)


async def test_the_timer_follows_next_timer() -> None:
    stack, core, loop = await started()
    try:
        _, kernel = stack._test_devices  # type: ignore[attr-defined]
        deadline = core.timer = loop.time() + 0.05
        stack.kick()
        await asyncio.sleep(0.2)
        # asyncio runs a timer once loop.time() is within its clock resolution of the deadline
        early = time.get_clock_info("monotonic").resolution
        assert len(core.timers_run) == 1 and core.timers_run[0] >= deadline - early
        assert kernel.read() == b"timer fired", "what handle_timer caused was not written"
    finally:
        await stop(stack)


async def test_lazy_accept_read_eof_and_close_release_once() -> None:
    stack, core, _ = await started()
    try:
        h = core.open_tcp(pending=True)
        stack.kick()
        flow = await asyncio.wait_for(stack.accept(), 2)
        link = flow.link
        assert isinstance(link, ByteLink) and not link.accepted
        await link.accept()
        await link.accept()
        assert core.log == [("accept", h)] and link.accepted
        reader = asyncio.create_task(link.read())
        await settle()
        assert not reader.done(), "read returned before anything was readable"
        core.deliver(h, b"hello")
        stack.kick()
        assert await asyncio.wait_for(reader, 2) == b"hello"
        core.deliver(h, b"last", eof=True)
        stack.kick()
        assert await link.read() == b"last" and await link.read() == b""
        await link.aclose()
        await link.aclose()
        link.abort()
        assert core.log[-1] == ("close", h) and [op for op, _ in core.log].count("close") == 1
        assert await link.read() == b""
        with pytest.raises(LinkClosed):
            await link.write(b"x")
    finally:
        await stop(stack)


async def test_write_waits_above_the_high_water_mark() -> None:
    stack, core, _ = await started()
    try:
        h = core.open_tcp(pending=False)
        stack.kick()
        link = (await asyncio.wait_for(stack.accept(), 2)).link
        assert isinstance(link, ByteLink)
        await link.write(b"x" * HIGH)  # at the mark: returns at once
        writer = asyncio.create_task(link.write(b"y" * 50))
        await settle()
        assert not writer.done(), "write returned above the high-water mark"
        core.acked(h, 20)  # still above: no event
        stack.kick()
        await settle()
        assert not writer.done()
        core.acked(h, 60)
        stack.kick()
        await asyncio.wait_for(writer, 2)
        await link.write_eof()
        with pytest.raises(LinkClosed):
            await link.write(b"after eof")
        assert ("shutdown", h) in core.log
    finally:
        await stop(stack)


async def test_a_reset_ends_waiters_and_keeps_received_bytes() -> None:
    stack, core, _ = await started()
    try:
        h = core.open_tcp(pending=False)
        stack.kick()
        link = (await asyncio.wait_for(stack.accept(), 2)).link
        assert isinstance(link, ByteLink)
        await link.write(b"x" * HIGH)
        writer = asyncio.create_task(link.write(b"more"))
        await settle()
        core.deliver(h, b"before the reset")
        core.end(h, reset=True)
        stack.kick()
        with pytest.raises(LinkClosed):
            await asyncio.wait_for(writer, 2)
        assert isinstance(link, CoreByteLink) and link.reset
        assert await link.read() == b"before the reset"  # the bytes before the reset first
        with pytest.raises(LinkClosed):  # then the reset (a StreamReset), never a clean EOF
            await link.read()
        link.abort()
        assert core.log == [("abort", h)]
        # A clean end is not a reset.
        h2 = core.open_tcp(pending=False)
        stack.kick()
        link2 = (await asyncio.wait_for(stack.accept(), 2)).link
        core.end(h2, reset=False)
        stack.kick()
        await settle()
        assert isinstance(link2, CoreByteLink) and not link2.reset and await link2.read() == b""
        await link2.aclose()
    finally:
        await stop(stack)


async def test_abort_before_accept_and_aclose_of_a_pending_flow_refuse() -> None:
    stack, core, _ = await started()
    try:
        h1, h2 = core.open_tcp(pending=True), core.open_tcp(pending=True)
        stack.kick()
        one, two = (await stack.accept()).link, (await stack.accept()).link
        one.abort()
        await two.aclose()  # never accepted: refused, not half-opened
        assert core.log == [("abort", h1), ("abort", h2)]
        assert isinstance(one, CoreByteLink) and isinstance(two, CoreByteLink) and one.reset and two.reset
    finally:
        await stop(stack)


async def test_udp_flow_recv_send_and_end() -> None:
    stack, core, _ = await started()
    try:
        core.n += 1
        h = core.n
        core.udp[h] = deque([(b"q", REMOTE, 53)])
        core.udp_live.add(h)
        core.events.append(UdpOpened(h, APP, 5353, REMOTE, 53))
        stack.kick()
        flow = await asyncio.wait_for(stack.accept(), 2)
        link = flow.link
        assert isinstance(link, PacketLink) and flow.network is Network.UDP
        packet = await link.recv()
        assert packet is not None and packet.data == b"q" and packet.peer.port == 53
        receiver = asyncio.create_task(link.recv())
        await settle()
        assert not receiver.done()
        core.udp[h].append((b"r", REMOTE, 54))
        core.events.append(UdpReadable(h))
        stack.kick()
        packet = await asyncio.wait_for(receiver, 2)
        assert packet is not None and packet.data == b"r"
        link.send(b"a", Destination(Network.UDP, ipaddress.ip_address("::ffff:198.51.100.1"), 53))
        link.send(b"b", Destination(Network.UDP, "example.invalid", 53))
        assert core.udp_sent == [(h, b"a", bytes((198, 51, 100, 1)), 53)]
        assert stack.counters["udp_reply_from_domain"] == 1
        core.udp[h].append((b"last", REMOTE, 53))
        core.udp_live.discard(h)
        core.events.append(UdpClosed(h))
        stack.kick()
        await settle()
        last = await link.recv()
        assert last is not None and last.data == b"last" and await link.recv() is None
        with pytest.raises(LinkClosed):
            link.send(b"c", packet.peer)
        await link.aclose()
        assert core.log == [("udp_close", h)]
    finally:
        await stop(stack)


async def test_aclose_resets_flows_wakes_accept_and_keeps_the_device() -> None:
    stack, core, _ = await started()
    h = core.open_tcp(pending=False)
    stack.kick()
    link = (await stack.accept()).link
    assert isinstance(link, CoreByteLink)
    reader = asyncio.create_task(link.read())
    waiter = asyncio.create_task(stack.accept())
    core.open_tcp(pending=True)  # queued, never accepted by anyone
    await settle()
    await stop(stack)
    with pytest.raises(LinkClosed):  # the flow was reset: the waiting read raises
        await asyncio.wait_for(reader, 2)
    assert link.reset
    with pytest.raises(StackClosed):
        await waiter
    with pytest.raises(StackClosed):
        await stack.accept()
    assert ("reset_all", 0) in core.log and ("abort", 2) in core.log, "the queued flow was not refused"
    assert h in core.tcp  # ended by the reset, still held by its link until aclose/abort
    await stack.aclose()
    assert stack.stats()["tcp_open"] == 0


async def test_a_device_that_fails_ends_the_stack_once_without_leaking() -> None:
    """A read or write error other than "would block" (a deleted TUN: EBADFD) is the device's end:
    ``failure`` says why, every flow is reset, ``accept`` raises StackClosed, nothing escapes to the loop."""
    stack, core, loop = await started()
    leaked: list[object] = []
    loop.set_exception_handler(lambda _loop, ctx: leaked.append(ctx))
    try:
        _mine, kernel = stack._test_devices  # type: ignore[attr-defined]
        kernel.write(b"open")
        flow = await asyncio.wait_for(stack.accept(), 2)
        kernel.close()  # the other end vanishes: the next read hits end of file
        core.out.append(b"reply")
        stack.kick()
        await settle()
        for _ in range(50):
            if stack.failure is not None:
                break
            await asyncio.sleep(0.01)
        assert isinstance(stack.failure, DeviceError), stack.failure
        assert stack.counters.get("device_failed") == 1
        with pytest.raises(StackClosed):
            await asyncio.wait_for(stack.accept(), 1)
        assert isinstance(flow.link, CoreByteLink) and flow.link.reset
        assert not leaked, leaked
    finally:
        await stack.aclose()
        stack._test_devices[0].close()  # type: ignore[attr-defined]


async def test_a_full_device_queue_drops_the_packet_and_goes_on() -> None:
    stack, core, _ = await started()
    try:
        mine, _kernel = stack._test_devices  # type: ignore[attr-defined]
        core.out.extend([b"p" * 60000] * 200)  # far beyond the socket buffer: EAGAIN, not a failure
        stack.kick()
        await settle()
        assert stack.failure is None and mine.write_drops > 0
    finally:
        await stop(stack)


class _SlowDial:
    """A plugin module: outbound ``slowdial`` whose dial never completes (until cancelled)."""

    started: list[object] = []
    cancelled: list[object] = []

    @staticmethod
    @hookimpl
    def tunray_register_types(registry: Any) -> None:
        registry.add_outbound(_SlowDialOutbound)


class _SlowDialOutbound(Outbound):
    protocol: ClassVar[str] = "slowdial"

    async def process(self, ctx: Any, link: ByteLink | PacketLink) -> None:
        _SlowDial.started.append(ctx)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            _SlowDial.cancelled.append(ctx)
            raise


async def test_a_syn_withdrawn_before_accept_stops_its_dial() -> None:
    """A pending SYN reset (by the app, or evicted under a SYN flood) cancels the flow's dial.

    Before: the dial ran on, so evicting half-open handshakes bounded nothing upstream.
    """
    cfg = {"log": {"loglevel": "none", "access": "none"}, "inbounds": [{"protocol": "driver", "tag": "drv"}],
           "outbounds": [{"protocol": "slowdial", "tag": "slow"}]}
    _SlowDial.started.clear()
    _SlowDial.cancelled.clear()
    async with running(cfg, extra=[_SlowDial]) as rt:
        stack, core, _ = await started()
        try:
            h = core.open_tcp(pending=True)
            stack.kick()
            link = (await asyncio.wait_for(stack.accept(), 2)).link
            task = driver_of(rt).open_link("10.0.0.2:40001", "192.0.2.1:443", link)
            for _ in range(100):
                if _SlowDial.started:
                    break
                await asyncio.sleep(0.01)
            assert len(_SlowDial.started) == 1
            core.end(h, reset=True)  # the SYN is withdrawn
            stack.kick()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 2)
            assert len(_SlowDial.cancelled) == 1
            assert core.log == [("abort", h)], "the cancelled flow released its handle exactly once"
        finally:
            await stop(stack)
