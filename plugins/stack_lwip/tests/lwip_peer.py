"""A scripted app-side TCP peer for driving :class:`LwipCore` in memory (no TUN, fake clock)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from tunray.net.packet import VNET_LEN, parse_ip
from tunray.stackcore import CoreEvent, TcpOpened
from tunray_stack_lwip.binding import tcp_segment
from tunray_stack_lwip.core import LwipConfig, LwipCore

SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08
APP4, FAR4 = bytes((10, 9, 0, 2)), bytes((93, 184, 216, 34))
APP6, FAR6 = bytes.fromhex("fd000000000000000000000000000002"), bytes.fromhex("20010db8000000000000000000001234")


@dataclass(frozen=True)
class Seg:
    src: bytes
    dst: bytes
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    options: bytes
    payload: bytes
    vnet: bytes


def parse(packet: bytes, vnet: bool = False) -> Seg:
    start = VNET_LEN if vnet else 0
    parsed = parse_ip(packet, start, vnet)
    assert not isinstance(parsed, str), parsed
    _v, src, dst, proto, l4, end = parsed
    assert proto == 6
    sport, dport, seq, ack, off, flags, window = struct.unpack_from("!HHIIBBH", packet, l4)
    hl = (off >> 4) * 4
    return Seg(src, dst, sport, dport, seq, ack, flags, window, packet[l4 + 20:l4 + hl], packet[l4 + hl:end],
               packet[:start])


class Clock:
    """A fake clock; like loop.time() it never goes back, even from one test's core to the next."""

    last = 1000.0

    def __init__(self) -> None:
        self.now = Clock.last + 10.0

    def tick(self, dt: float) -> float:
        self.now += dt
        Clock.last = self.now
        return self.now


def make_core(clock: Clock, **kw: object) -> LwipCore:
    config = LwipConfig(**kw)  # type: ignore[arg-type]
    return LwipCore(config, clock.now)


class Peer:
    """One app connection ``src:sport -> dst:dport``; ``rcv`` is the next sequence number expected."""

    def __init__(self, core: LwipCore, clock: Clock, sport: int = 40000, dport: int = 443, v6: bool = False,
                 vnet: bool = False) -> None:
        self.core, self.clock = core, clock
        self.src, self.dst = (APP6, FAR6) if v6 else (APP4, FAR4)
        self.sport, self.dport, self.vnet = sport, dport, vnet
        self.snd = 1000
        self.rcv = 0
        self.events: list[CoreEvent] = []

    def send(self, flags: int, payload: bytes = b"", options: bytes = b"", seq: int | None = None) -> None:
        packet = tcp_segment(self.src, self.dst, self.sport, self.dport, self.snd if seq is None else seq,
                             self.rcv if flags & ACK else 0, flags, payload, options)
        if self.vnet:
            packet = bytes(VNET_LEN) + packet
        self.core.feed(packet, self.clock.now)
        if seq is None:
            self.snd += len(payload) + (1 if flags & (SYN | FIN) else 0)
        self.events += self.core.take_events()

    def recv(self) -> list[Seg]:
        """Every segment the core sends now, for this peer (the others stay in ``stray``)."""
        segs = [parse(p, self.vnet) for p in self.core.drain(self.clock.now)]
        self.events += self.core.take_events()
        mine = [s for s in segs if s.dst == self.src and s.dport == self.sport]
        for s in mine:
            if s.flags & SYN:
                self.rcv = s.seq + 1
            end = s.seq + len(s.payload) + (1 if s.flags & FIN else 0)
            if s.flags & (SYN | RST) == 0 and end - self.rcv > 0:
                self.rcv = end & 0xFFFFFFFF
        return mine

    def handshake(self) -> int:
        """SYN, accept, SYN-ACK, ACK: returns the handle."""
        self.send(SYN, options=b"\x02\x04\x05\xb4")
        opened = [e for e in self.events if isinstance(e, TcpOpened)]
        if opened:  # lazy: the SYN waits for tcp_accept
            assert opened[-1].pending
            self.core.tcp_accept(opened[-1].handle, self.clock.now)
        synack = self.recv()
        assert synack and synack[0].flags & (SYN | ACK) == SYN | ACK, synack
        self.send(ACK)
        opened = [e for e in self.events if isinstance(e, TcpOpened)]
        assert opened, self.events
        return opened[-1].handle
