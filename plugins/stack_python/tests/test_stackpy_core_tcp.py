"""The sans-IO core against a scripted peer (hand-built packets, fake time)."""

from __future__ import annotations

import hashlib
import os
import struct

import pytest
from stackpy_wire import ACK, FIN, PSH, RST, SYN, Seg, decode, syn_opts, tcp
from tunray import stackcore as events
from tunray_stack_python.core import Core, CoreConfig
from tunray_stack_python.tcp import TcpConn
from tunray_stack_python.tcp_state import State

APP, APP_PORT = "10.0.0.2", 40000
REMOTE, REMOTE_PORT = "93.184.216.34", 443
ISS = 0x10000000


def make_core(**kw: object) -> Core:
    return Core(CoreConfig(**kw), isn=lambda: ISS)  # type: ignore[arg-type]


class Peer:
    """The app side of one connection, scripted by hand."""

    def __init__(self, core: Core, src: str = APP, dst: str = REMOTE, sport: int = APP_PORT,
                 dport: int = REMOTE_PORT, isn: int = 5000) -> None:
        self.core, self.src, self.dst, self.sport, self.dport = core, src, dst, sport, dport
        self.seq = isn
        self.ack = 0
        self.now = 100.0
        self.conn: TcpConn | None = None

    def send(self, flags: int, payload: bytes = b"", seq: int | None = None, options: bytes = b"",
             win: int = 65535) -> list[Seg]:
        packet = tcp(self.src, self.dst, self.sport, self.dport, self.seq if seq is None else seq, self.ack,
                     flags, win, options, payload)
        self.core.feed(packet, self.now)
        if seq is None:
            self.seq += len(payload) + (1 if flags & (SYN | FIN) else 0)
        return self.drain()

    def drain(self) -> list[Seg]:
        return [decode(p) for p in self.core.drain(self.now)]

    def handshake(self, options: bytes | None = None, accept: bool = True) -> Seg | None:
        out = self.send(SYN, options=syn_opts() if options is None else options)
        ev = [e for e in self.core.events if isinstance(e, events.TcpOpened)]
        assert len(ev) == 1
        self.conn = self.core.tcp_handles[ev[0].handle]
        self.core.events.clear()
        if not accept:
            assert out == []
            return None
        if not self.core.config.eager:
            self.core.tcp_accept(self.conn.handle, self.now)
            out = self.drain()
        assert len(out) == 1 and out[0].flags == SYN | ACK
        self.ack = out[0].seq + 1
        self.send(ACK)
        assert self.conn.state is State.ESTABLISHED
        return out[0]


def test_lazy_handshake_then_data_both_ways() -> None:
    core = make_core()
    peer = Peer(core)
    synack = peer.handshake()
    assert synack is not None
    assert synack.seq == ISS and synack.ack == 5001
    assert struct.unpack("!H", synack.options[2])[0] == 1460
    assert synack.options[3] == bytes((max((4 << 20).bit_length() - 16, 7),))
    assert 4 in synack.options  # SACK permitted echoed
    conn = peer.conn
    assert conn is not None
    out = peer.send(ACK | PSH, b"hello")
    assert [s.ack for s in out] == [peer.seq] and out[0].flags == ACK
    assert core.tcp_read(conn.handle, 100, peer.now) == b"hello"
    core.tcp_write(conn.handle, b"world", peer.now)
    out = peer.drain()
    assert out[0].payload == b"world" and out[0].seq == ISS + 1
    peer.ack += 5
    peer.send(ACK)
    assert conn.snd_una == 5 and not conn.sndbuf


def test_eager_answers_syn_at_once() -> None:
    core = make_core(eager=True)
    out = Peer(core).send(SYN, options=syn_opts())
    assert len(out) == 1 and out[0].flags == SYN | ACK


def test_abort_before_accept_sends_rst() -> None:
    core = make_core()
    peer = Peer(core)
    peer.handshake(accept=False)
    assert peer.conn is not None
    core.tcp_abort(peer.conn.handle, peer.now)
    out = peer.drain()
    assert len(out) == 1 and out[0].flags == RST | ACK and out[0].ack == 5001
    assert not core.conns and not core.tcp_handles
    assert not [e for e in core.events if isinstance(e, (events.TcpClosed, events.TcpReset))]  # released


def test_unknown_segment_gets_rst() -> None:
    core = make_core()
    peer = Peer(core)
    out = peer.send(ACK, b"x", seq=1234)
    assert out[0].flags == RST and out[0].seq == 0  # RST seq = the segment's ACK field
    assert core.counters["tcp_no_connection"] == 1


@pytest.mark.parametrize("flags", [SYN | FIN, SYN | FIN | PSH | 0x20, SYN | RST, FIN, PSH, 0x20, 0, FIN | PSH | 0x20])
@pytest.mark.parametrize("eager", [False, True])
def test_nonsensical_flags_open_nothing_and_are_counted(flags: int, eager: bool) -> None:
    """SYN+FIN and segments with none of SYN/ACK/RST are dropped silently, as Linux does in LISTEN
    (before: SYN+FIN opened a connection and an upstream dial; the others drew a RST)."""
    core = make_core(eager=eager)
    out = Peer(core).send(flags, b"x")
    assert out == [] and not core.conns and not core.take_events()
    assert core.counters == {"tcp_bad_flags": 1}


def test_out_of_order_reassembly_and_sack() -> None:
    core = make_core()
    peer = Peer(core)
    peer.handshake()
    conn = peer.conn
    assert conn is not None
    data = os.urandom(3000)
    base = peer.seq
    out = peer.send(ACK, data[2000:], seq=base + 2000)
    assert out[0].ack == base and 5 in out[0].options  # dup ACK with a SACK block
    left, right = struct.unpack("!II", out[0].options[5][:8])
    assert (left, right) == (base + 2000, base + 3000)
    out = peer.send(ACK, data[1000:2000], seq=base + 1000)
    assert out[0].ack == base
    out = peer.send(ACK, data[:1000], seq=base)
    assert out[-1].ack == base + 3000
    assert core.tcp_read(conn.handle, 10000, peer.now) == data


def test_receive_window_bounds_memory_and_reopens() -> None:
    core = make_core(tcp_buffer=64 << 10)
    peer = Peer(core)
    peer.handshake()
    conn = peer.conn
    assert conn is not None
    chunk = b"a" * 1000
    sent = 0
    last: list[Seg] = []
    for _ in range(80):
        last = peer.send(ACK, chunk, seq=peer.seq)
        peer.seq += len(chunk)
        sent += len(chunk)
    assert len(conn.rcvbuf) == 64 << 10  # the rest was beyond the window
    assert last[-1].win == 0
    assert last[-1].ack < peer.seq
    data = core.tcp_read(conn.handle, 1 << 20, peer.now)
    assert len(data) == 64 << 10
    out = peer.drain()
    assert out and out[-1].win > 0  # window update after the read


def test_fin_both_ways_and_time_wait() -> None:
    core = make_core(time_wait=2.0)
    peer = Peer(core)
    peer.handshake()
    conn = peer.conn
    assert conn is not None
    core.tcp_write(conn.handle, b"bye", peer.now)
    core.tcp_shutdown(conn.handle, peer.now)
    out = peer.drain()
    assert out[-1].flags & FIN and out[-1].payload == b"bye"
    peer.ack = out[-1].seq + 3 + 1
    peer.send(ACK)
    assert conn.state is State.FIN_WAIT_2
    out = peer.send(ACK | FIN, b"last")
    assert out[-1].ack == peer.seq
    assert conn.state is State.TIME_WAIT  # type: ignore[comparison-overlap]
    assert core.tcp_read(conn.handle, 100, peer.now) == b"last" and conn.eof
    t = core.next_timer()
    assert t is not None and t <= peer.now + 2.0
    core.handle_timer(peer.now + 2.0)
    assert not core.conns


def test_peer_fin_first_half_close() -> None:
    core = make_core()
    peer = Peer(core)
    peer.handshake()
    conn = peer.conn
    assert conn is not None
    peer.send(ACK | FIN)
    assert conn.state is State.CLOSE_WAIT and conn.eof
    core.tcp_write(conn.handle, b"still talking", peer.now)
    out = peer.drain()
    assert out[0].payload == b"still talking"
    core.tcp_shutdown(conn.handle, peer.now)
    out = peer.drain()
    assert out[-1].flags & FIN
    peer.ack = out[-1].seq + 1 + len(out[-1].payload)
    peer.send(ACK)
    assert not core.conns


def test_rst_in_window_closes_out_of_window_ignored() -> None:
    core = make_core()
    peer = Peer(core)
    peer.handshake()
    peer.send(RST, seq=peer.seq + (10 << 20))
    assert core.conns and core.counters["tcp_rst_out_of_window"] == 1
    peer.send(RST)
    assert not core.conns


def test_rto_retransmits_with_backoff() -> None:
    core = make_core()
    peer = Peer(core)
    peer.handshake()
    conn = peer.conn
    assert conn is not None
    core.tcp_write(conn.handle, b"x" * 100, peer.now)
    assert peer.drain()[0].payload == b"x" * 100
    t1 = core.next_timer()
    assert t1 is not None
    core.handle_timer(t1)
    out = [decode(p) for p in core.drain(t1)]
    assert out[0].payload == b"x" * 100 and out[0].seq == ISS + 1
    t2 = core.next_timer()
    assert t2 is not None and t2 - t1 >= 2 * (t1 - peer.now) - 1e-6


def test_fast_retransmit_on_three_dup_acks() -> None:
    core = make_core(mtu=1040)
    peer = Peer(core)
    peer.handshake(options=syn_opts(mss=1000, ts=None))
    conn = peer.conn
    assert conn is not None
    payload = os.urandom(10_000)
    core.tcp_write(conn.handle, payload, peer.now)
    out = peer.drain()
    assert len(out) == 10
    # The first segment is "lost": the peer ACKs the start three times, SACKing the others.
    for i in range(1, 4):
        sack = b"\x01\x01\x05\x0a" + struct.pack("!II", ISS + 1 + 1000, ISS + 1 + 1000 * (i + 1))
        out = peer.send(ACK, options=sack)
    assert core.counters["tcp_fast_retransmit"] == 1
    assert any(s.seq == ISS + 1 and len(s.payload) == 1000 for s in out)
    peer.ack = ISS + 1 + 10_000
    peer.send(ACK)
    assert conn.snd_una == 10_000 and not conn.in_recovery


def test_lossy_transfer_with_fake_time_delivers_every_byte() -> None:
    """Drop every 7th segment in both directions; the core's data must arrive intact."""
    core = make_core(mtu=1500)
    peer = Peer(core)
    peer.handshake(options=syn_opts(ts=None))
    conn = peer.conn
    assert conn is not None
    payload = os.urandom(300_000)
    core.tcp_write(conn.handle, payload, peer.now)
    received = bytearray()
    n = 0
    pending = peer.drain()
    for _ in range(5000):
        if not pending:
            t = core.next_timer()
            assert t is not None
            peer.now = max(peer.now, t)
            core.handle_timer(peer.now)
            pending = peer.drain()
            continue
        seg = pending.pop(0)
        n += 1
        if n % 7 == 0:
            continue  # lost on the way to the peer
        if seg.payload and seg.seq == peer.ack:
            received += seg.payload
            peer.ack += len(seg.payload)
        if n % 5:  # some ACKs are lost too
            pending += peer.send(ACK)
        if len(received) == len(payload):
            break
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()


@pytest.mark.parametrize("version", [4, 6])
def test_ipv6_and_ipv4_handshake(version: int) -> None:
    core = make_core()
    if version == 6:
        peer = Peer(core, src="fd77::2", dst="2001:db8::1")
    else:
        peer = Peer(core)
    synack = peer.handshake(options=syn_opts(mss=65000))
    assert synack is not None and synack.version == version
    assert struct.unpack("!H", synack.options[2])[0] == 1500 - (40 if version == 4 else 60)


def test_idle_timeout_resets() -> None:
    core = make_core(tcp_idle_timeout=30.0)
    peer = Peer(core)
    peer.handshake()
    core.events.clear()
    t = core.next_timer()
    assert t is not None and t <= peer.now + 30.0
    core.handle_timer(peer.now + 30.0)
    out = peer.drain()
    assert out and out[0].flags & RST
    assert not core.conns and core.counters["tcp_idle_timeout"] == 1
    assert peer.conn is not None and core.events == [events.TcpReset(peer.conn.handle)]


def test_closed_connections_are_freed_long_before_their_timers_fire() -> None:
    """A burst of short connections leaves neither the connections nor their buffers behind.

    Each one is established, carries data the app never reads, and is reset by the app; its
    idle timer (300 s) is still in the heap.  Lazy timer deletion used to keep every one of
    them (and its receive buffer) alive until that deadline.
    """
    import gc

    def alive() -> list[TcpConn]:
        gc.collect()
        return [o for o in gc.get_objects() if type(o) is TcpConn]

    core = make_core(tcp_idle_timeout=300.0)
    before = len(alive())
    n = 2000
    for i in range(n):
        peer = Peer(core, sport=10000 + i)
        peer.handshake()
        conn = peer.conn
        assert conn is not None
        peer.send(ACK | PSH, b"x" * 1000)
        core.tcp_abort(conn.handle, peer.now)
        peer.drain()
    del peer, conn
    assert not core.conns and not core.tcp_handles
    assert len(core._timers) <= 2 * len(core.conns) + 256  # compacted, not 2,000 stale entries
    left = alive()
    assert len(left) - before <= 256, f"{len(left) - before} of {n} closed connections still alive"
    assert all(not c.rcvbuf for c in left)  # and those hold no received bytes


def test_passive_close_acks_the_apps_fin_with_ours_or_after_40_ms() -> None:
    """In CLOSE_WAIT the ACK of the app's FIN waits (as Linux's delayed ACK does) for our FIN."""
    core = make_core()
    peer = Peer(core)
    peer.handshake()
    conn = peer.conn
    assert conn is not None
    assert peer.send(ACK | FIN) == []  # nothing yet
    assert conn.state is State.CLOSE_WAIT
    core.tcp_shutdown(conn.handle, peer.now + 0.001)
    out = peer.drain()
    assert [(s.flags & (FIN | ACK), s.ack) for s in out] == [(FIN | ACK, peer.seq)]  # our FIN acks theirs

    core = make_core()
    peer = Peer(core)
    peer.handshake()
    assert peer.send(ACK | FIN) == []
    t = core.next_timer()
    assert t is not None and t == pytest.approx(peer.now + 0.04)
    core.handle_timer(t)
    out = [decode(p) for p in core.drain(t)]
    assert [(s.flags, s.ack) for s in out] == [(ACK, peer.seq)]  # no FIN of ours in 40 ms: a bare ACK


def test_a_fin_with_data_or_in_fin_wait_is_acked_at_once() -> None:
    core = make_core()
    peer = Peer(core)
    peer.handshake()
    out = peer.send(ACK | FIN | PSH, b"last words")
    assert [(s.flags, s.ack) for s in out] == [(ACK, peer.seq)]  # the data's ACK covers the FIN too

    core = make_core()
    peer = Peer(core)
    peer.handshake()
    conn = peer.conn
    assert conn is not None
    core.tcp_shutdown(conn.handle, peer.now)
    fin = peer.drain()[-1]
    peer.ack = fin.seq + 1
    out = peer.send(ACK | FIN)  # our FIN acked and theirs: FIN_WAIT -> TIME_WAIT, ACK now
    assert [(s.flags, s.ack) for s in out] == [(ACK, peer.seq)]


def test_the_buffer_budget_follows_the_bytes_held_to_the_end() -> None:
    """maxBufferedBytes counts what a connection holds until it is read or dropped, also after a reset."""
    core = make_core(max_buffered=1 << 20)
    budget = core.budget
    assert budget is not None
    peer = Peer(core)
    peer.handshake()
    conn = peer.conn
    assert conn is not None
    peer.send(ACK | PSH, b"a" * 1000)
    peer.send(ACK | PSH, b"c" * 500, seq=peer.seq + 1000)  # out of order, after a hole
    assert budget.used == 1500
    peer.send(RST, seq=peer.seq)  # the app resets: closed, but the driver still holds the handle
    assert budget.used == 1000, "out-of-order bytes are never delivered now; the in-order ones stay readable"
    assert core.tcp_read(conn.handle, 4096, peer.now) == b"a" * 1000
    assert budget.used == 0
    core.tcp_abort(conn.handle, peer.now)
    assert budget.used == 0 and not budget.waiters


def test_a_full_buffer_budget_takes_what_fits_and_leaves_the_rest_unacknowledged() -> None:
    core = make_core(max_buffered=1500)
    peer = Peer(core)
    peer.handshake()
    conn = peer.conn
    assert conn is not None
    out = peer.send(ACK | PSH, b"x" * 2000)
    assert core.budget is not None and core.budget.used == 1500
    assert max(s.ack for s in out) == 5001 + 1500, "only what was kept is acknowledged"
    assert core.counters["tcp_buffer_budget_full"] == 1
    assert core.tcp_read(conn.handle, 4096, peer.now) == b"x" * 1500
    out = peer.drain()  # room again: the connection that was cut gets an ACK with its window
    assert out and out[-1].ack == 5001 + 1500 and out[-1].win > 0
