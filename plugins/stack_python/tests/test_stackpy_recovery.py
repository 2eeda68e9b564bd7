"""Sender-side loss recovery of the sans-IO core against a scripted receiver (fake time).

The receiver drops chosen transmissions, reassembles the rest and answers every segment
with a cumulative ACK plus SACK blocks (most recent block first, like Linux).
"""

from __future__ import annotations

import os
import struct

from stackpy_wire import ACK, FIN, Seg, syn_opts
from test_stackpy_core_tcp import ISS, Peer, make_core
from tunray_stack_python.core import Core
from tunray_stack_python.tcp import TcpConn
from tunray_stack_python.tcp_sender import MIN_RTO

MSS = 1000


class Receiver:
    """Reassembles what the core sends; ``drop(offset, nth)`` picks transmissions to lose."""

    def __init__(self, peer: Peer, conn: TcpConn, sack: bool = True) -> None:
        self.peer, self.conn, self.sack = peer, conn, sack
        self.data: dict[int, bytes] = {}  # offset -> payload
        self.rcv = 0  # contiguous bytes received
        self.blocks: list[list[int]] = []  # out-of-order ranges, most recent first
        self.sent: dict[int, int] = {}  # offset -> transmissions seen
        self.fin = False
        self.ts_recent: bytes | None = None  # echoed back when the core sends timestamps

    def ack_options(self) -> bytes:
        ts = b"" if self.ts_recent is None else b"\x01\x01\x08\x0a" + struct.pack("!I", 7) + self.ts_recent
        blocks = [b for b in self.blocks if b[1] > self.rcv][:(3 if ts else 4) if self.sack else 0]
        if not blocks:
            return ts
        return ts + b"\x01\x01\x05" + bytes((2 + 8 * len(blocks),)) + b"".join(
            struct.pack("!II", ISS + 1 + a, ISS + 1 + b) for a, b in blocks)

    def take(self, seg: Seg, drop: set[tuple[int, int]]) -> list[Seg]:
        """Receive one segment (unless dropped) and return what the core answers to our ACK."""
        off = (seg.seq - ISS - 1) & 0xFFFFFFFF
        nth = self.sent[off] = self.sent.get(off, 0) + 1
        if (off, nth) in drop or not (seg.payload or seg.flags & FIN):
            return []
        if 8 in seg.options:
            self.ts_recent = seg.options[8][:4]
        if seg.payload:
            self.data[off] = seg.payload
            end = off + len(seg.payload)
            if off > self.rcv:
                for b in self.blocks:
                    if b[0] <= end and off <= b[1]:
                        b[0], b[1] = min(b[0], off), max(b[1], end)
                        self.blocks.remove(b)
                        self.blocks.insert(0, b)
                        break
                else:
                    self.blocks.insert(0, [off, end])
            while self.rcv in self.data:
                self.rcv += len(self.data[self.rcv])
            for b in self.blocks:
                if b[0] <= self.rcv < b[1]:
                    self.rcv = b[1]
        if seg.flags & FIN and (off + len(seg.payload)) == self.rcv:
            self.fin = True
        self.peer.ack = ISS + 1 + self.rcv + (1 if self.fin else 0)
        return self.peer.send(ACK, options=self.ack_options())

    def payload(self) -> bytes:
        out, off = b"", 0
        while off in self.data:
            out += self.data[off]
            off += len(self.data[off])
        return out


def run(core: Core, peer: Peer, rx: Receiver, first: list[Seg], drop: set[tuple[int, int]],
        until: int, log: list[tuple[int, float]] | None = None) -> None:
    """Deliver segments in order, firing timers when nothing is in flight, until *until* bytes arrived."""
    pending = list(first)
    for _ in range(10_000):
        if rx.rcv >= until and not pending:
            return
        if not pending:
            t = core.next_timer()
            assert t is not None
            peer.now = max(peer.now, t)
            core.handle_timer(peer.now)
            pending = peer.drain()
            continue
        if log is not None:
            log.append((rx.conn.cwnd, rx.conn.rto))
        pending += rx.take(pending.pop(0), drop)
        if log is not None:
            log.append((rx.conn.cwnd, rx.conn.rto))
    raise AssertionError("the transfer did not finish")


def setup(sack: bool = True, ts: bool = False, **kw: object) -> tuple[Core, Peer, TcpConn]:
    core = make_core(mtu=MSS + 40, **kw)
    peer = Peer(core)
    peer.handshake(options=syn_opts(mss=MSS, sack=sack, ts=(1, 0) if ts else None))
    assert peer.conn is not None
    return core, peer, peer.conn


def test_sack_holes_retransmitted_without_rto_and_cwnd_halved_once() -> None:
    core, peer, conn = setup()
    payload = os.urandom(40 * MSS)
    core.tcp_write(conn.handle, payload, peer.now)
    first = peer.drain()
    assert len(first) == 40
    rx = Receiver(peer, conn)
    drop = {(3 * MSS, 1), (7 * MSS, 1), (20 * MSS, 1)}  # three holes in one window
    log: list[tuple[int, float]] = []
    run(core, peer, rx, first, drop, len(payload), log)
    assert rx.payload() == payload
    assert core.counters.get("tcp_rto", 0) == 0
    assert core.counters["tcp_fast_retransmit"] == 1  # one loss event, one reduction
    assert core.counters["tcp_sack_retransmit"] == 3
    assert all(rx.sent[off] == (2 if (off, 1) in drop else 1) for off in rx.sent)  # SACKed data never resent
    assert conn.ssthresh == (40 - 3) * MSS // 2  # half the flight when the loss was detected
    assert min(c for c, _ in log) >= conn.ssthresh  # cwnd never collapsed below the halved window
    assert not conn.in_recovery and conn.cwnd >= conn.ssthresh and conn.rec is None


def test_lost_retransmission_is_resent_without_rto() -> None:
    core, peer, conn = setup(initial_cwnd=10 * MSS)
    payload = os.urandom(60 * MSS)
    core.tcp_write(conn.handle, payload, peer.now)
    first = peer.drain()
    assert len(first) == 10
    rx = Receiver(peer, conn)
    drop = {(2 * MSS, 1), (2 * MSS, 2)}  # the segment and its first retransmission
    run(core, peer, rx, first, drop, len(payload))
    assert rx.payload() == payload
    assert rx.sent[2 * MSS] == 3
    assert core.counters.get("tcp_rto", 0) == 0
    assert core.counters["tcp_fast_retransmit"] == 1


def test_tail_loss_probe_recovers_the_tail_before_the_rto() -> None:
    core, peer, conn = setup(ts=True)
    seg = MSS - 12
    rx = Receiver(peer, conn)
    # One clean round trip so the core has an RTT estimate.
    core.tcp_write(conn.handle, b"a" * seg, peer.now)
    for s in peer.drain():
        rx.take(s, set())
    payload = b"a" * seg + os.urandom(6 * seg)
    core.tcp_write(conn.handle, payload[seg:], peer.now)
    first = peer.drain()
    assert len(first) == 6
    drop = {(5 * seg, 1), (6 * seg, 1)}  # the last two segments
    for s in first:
        rx.take(s, drop)
    assert rx.rcv == 5 * seg
    t = core.next_timer()
    assert t is not None and t - peer.now < MIN_RTO  # a probe, not the RTO
    run(core, peer, rx, [], drop, len(payload))
    assert rx.payload() == payload
    assert core.counters["tcp_tail_loss_probe"] == 1
    assert core.counters.get("tcp_rto", 0) == 0


def test_newreno_partial_ack_without_sack() -> None:
    core, peer, conn = setup(sack=False)
    payload = os.urandom(30 * MSS)
    core.tcp_write(conn.handle, payload, peer.now)
    first = peer.drain()
    rx = Receiver(peer, conn, sack=False)
    drop = {(4 * MSS, 1), (9 * MSS, 1)}
    run(core, peer, rx, first, drop, len(payload))
    assert rx.payload() == payload
    assert core.counters.get("tcp_rto", 0) == 0
    assert core.counters["tcp_fast_retransmit"] == 1
    assert core.counters["tcp_partial_ack_retransmit"] == 2
    assert conn.ssthresh == (30 - 4) * MSS // 2 and not conn.in_recovery


def test_rto_keeps_sacked_data_and_forgets_backoff_on_progress() -> None:
    core, peer, conn = setup()
    payload = os.urandom(8 * MSS)
    core.tcp_write(conn.handle, payload, peer.now)
    first = peer.drain()
    rx = Receiver(peer, conn)
    # The head is lost three times: fast retransmit, then two timeouts (backed off).
    drop = {(0, 1), (0, 2), (0, 3), (MSS, 1)}
    rto0 = conn.rto
    log: list[tuple[int, float]] = []
    run(core, peer, rx, first, drop, len(payload), log)
    assert rx.payload() == payload
    assert core.counters["tcp_fast_retransmit"] == 1 and core.counters["tcp_rto"] == 2
    assert rx.sent[0] == 4 and rx.sent[MSS] == 2
    assert all(rx.sent[k * MSS] == 1 for k in range(2, 8))  # SACKed data never went out again
    assert max(r for _, r in log) >= 4 * rto0  # backed off twice ...
    assert conn.rto == rto0 and conn.rec is None  # ... and forgotten once new data was ACKed
