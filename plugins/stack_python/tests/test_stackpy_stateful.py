"""Hypothesis over state x input for the sans-IO core: a model TCP peer (the kernel side) and a model app.

Theory of operation.

* The machine keeps up to three flows (IPv4 or IPv6, random SYN options).  Each flow is a
  :class:`Flow`: the peer's view (what it sent, what it received, the stack's ISS, windows,
  timestamps) and the app's view (what it wrote, read, shut down).  Byte streams are
  deterministic and non-periodic (SHA-256 counter blocks), so any corruption, reordering or
  duplication shows up as a mismatch.
* Every packet the core emits is parsed here with an independent checksum (16-bit words via
  ``struct``, folded), routed to its flow and queued in the flow's inbox; the peer takes
  packets from the inbox with random losses.  A stack data byte must equal the app's byte at
  that offset, its FIN must sit right after the last byte written and only after a shutdown,
  and its ACKs may only cover what the peer actually sent.
* State transitions are observed exactly: each accepted connection's class is switched to
  :class:`RecordingConn` (same slots, one overridden method) whose ``go`` checks every change
  against :data:`TRANSITIONS`; an invariant checks no state change bypassed ``go``.
* Malformed packets (truncated, bit-flipped, bad data offset, bad options, random bytes) must
  be counted, must change nothing and must emit nothing.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import hypothesis.strategies as st
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from stackpy_wire import ACK, FIN, PSH, RST, SYN, ip_bytes, syn_opts, tcp, tcp_options
from tunray import stackcore as events
from tunray_stack_python.core import Core, CoreConfig
from tunray_stack_python.tcp import TcpConn
from tunray_stack_python.tcp_state import SENDING, TRANSITIONS, Input, State

M32 = 0xFFFFFFFF
LIMIT = 8192  # tcp_buffer: the receive window and receive memory bound per flow
HIGH = 4096  # send_high_water
MAX_WRITE = 3000  # the app writes at most this much per call, and only below HIGH
MAX_FLOWS = 3
ADDRS = {4: ("10.0.0.2", "93.184.216.34"), 6: ("fd77::2", "2001:db8::1")}


def stream(tag: bytes, off: int, n: int) -> bytes:
    """Bytes ``off:off+n`` of a deterministic, non-periodic stream named *tag*."""
    first, last = off // 32, (off + n + 31) // 32
    blob = b"".join(hashlib.sha256(tag + i.to_bytes(8, "big")).digest() for i in range(first, last))
    return blob[off - first * 32:off - first * 32 + n]


def word_checksum(data: bytes) -> int:
    """RFC 1071 by unpacking 16-bit words (independent of the stack's big-int trick)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total  # 0xFFFF (or 0 for an all-zero region) when a region with its checksum verifies


def seq_delta(a: int, b: int) -> int:
    d = (a - b) & M32
    return d - (1 << 32) if d & 0x80000000 else d


@dataclass
class Emitted:
    version: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    win: int
    options: dict[int, bytes]
    payload: bytes


def parse_emitted(packet: bytes) -> Emitted:
    """Parse one packet the core wrote; fail the test if it is not valid IPv4/IPv6 + TCP."""
    assert len(packet) >= 20, "runt packet"
    version = packet[0] >> 4
    if version == 4:
        assert packet[0] == 0x45, "IPv4 header with options or bad IHL"
        assert word_checksum(packet[:20]) == 0xFFFF, "bad IPv4 header checksum"
        assert struct.unpack_from("!H", packet, 2)[0] == len(packet), "IPv4 total length"
        assert not packet[6] & 0x3F and not packet[7], "fragment"
        assert packet[9] == 6, "not TCP"
        src, dst, l4 = packet[12:16], packet[16:20], packet[20:]
        pseudo = src + dst + struct.pack("!BBH", 0, 6, len(l4))
    else:
        assert version == 6, "bad IP version"
        assert len(packet) >= 40
        assert struct.unpack_from("!H", packet, 4)[0] + 40 == len(packet), "IPv6 payload length"
        assert packet[6] == 6, "not TCP"
        src, dst, l4 = packet[8:24], packet[24:40], packet[40:]
        pseudo = src + dst + struct.pack("!I3xB", len(l4), 6)
    assert len(l4) >= 20, "truncated TCP header"
    assert word_checksum(pseudo + l4) == 0xFFFF, "bad TCP checksum"
    sport, dport, seq, ack, off, flags, win = struct.unpack_from("!HHIIBBH", l4)
    hl = (off >> 4) * 4
    opts = tcp_options(l4, hl)
    return Emitted(version, src, dst, sport, dport, seq, ack, flags, win, opts, l4[hl:])


@dataclass
class Flow:
    n: int
    version: int
    src: str
    dst: str
    sport: int
    dport: int
    irs: int  # the peer's ISS
    mss: int
    wscale: int | None
    sack: bool
    ts: bool
    conn: TcpConn
    model_state: State = State.SYN_PENDING
    transitions: list[tuple[State, Input, State]] = field(default_factory=list)
    closed_events: int = 0
    released: bool = False  # the app called tcp_abort/tcp_close: the handle is gone
    inbox: list[Emitted] = field(default_factory=list)
    # The peer's view.
    stack_iss1: int | None = None  # from the SYN-ACK
    stack_wscale: int = 0
    sent: list[tuple[int, int]] = field(default_factory=list)  # data ranges the peer sent
    sent_max: int = 0
    fin_off: int | None = None  # where the peer's FIN sits
    got: list[tuple[int, int]] = field(default_factory=list)  # stack data ranges the peer received
    stack_fin_off: int | None = None
    last_ack_off: int = 0  # the highest ACK (offset) the peer saw from the stack
    max_right: int = 0  # the highest window right edge the stack advertised
    peer_right: int = 0  # the highest window right edge the peer advertised (stack data offsets)
    stack_tsval: int = 0
    reset_seen: bool = False
    # The app's view.
    written: int = 0
    read: bytearray = field(default_factory=bytearray)
    shut: bool = False
    read_closed: bool = False
    eof_read: bool = False

    @property
    def tag_up(self) -> bytes:  # peer -> stack -> app
        return b"up%d" % self.n

    @property
    def tag_down(self) -> bytes:  # app -> stack -> peer
        return b"down%d" % self.n

    def contiguous(self, ranges: list[tuple[int, int]]) -> int:
        end = 0
        for a, b in sorted(ranges):
            if a > end:
                break
            end = max(end, b)
        return end

    @property
    def rcv_len(self) -> int:
        return self.contiguous(self.got)

    @property
    def peer_ack(self) -> int:
        n = self.rcv_len
        assert self.stack_iss1 is not None
        return (self.stack_iss1 + n + (1 if self.stack_fin_off == n else 0)) & M32

    def peer_seq(self, off: int) -> int:
        return (self.irs + 1 + off) & M32


class RecordingCore(Core):
    """A core that knows the model :class:`Flow` of each handle (for :class:`RecordingConn`)."""

    def __init__(self, config: CoreConfig, isn: Callable[[], int]) -> None:
        super().__init__(config, isn)
        self.model: dict[int, Flow] = {}


class RecordingConn(TcpConn):
    """A :class:`TcpConn` whose state changes are checked against the table."""

    __slots__ = ()

    def go(self, what: Input) -> bool:
        before = self.state
        ok = super().go(what)
        assert isinstance(self.core, RecordingCore)
        flow = self.core.model[self.handle]
        assert isinstance(flow, Flow)
        assert before is flow.model_state, f"state changed outside go(): {flow.model_state} -> {before}"
        if ok:
            assert TRANSITIONS[(before, what)] is self.state or self.state is State.CLOSED
            flow.model_state = TRANSITIONS[(before, what)]
            flow.transitions.append((before, what, flow.model_state))
        else:
            assert (before, what) not in TRANSITIONS and self.state is before
        return ok


BAD_OPTIONS = [
    b"\x02\x03\x05\xb4",  # MSS with length 3
    b"\x02\x01\x00\x00",  # length below 2
    b"\x02\x08\x00\x00",  # runs past the header
    b"\x01\x01\x01\x02",  # kind without a length byte
    b"\x03\x04\x07\x00",  # window scale with length 4
    b"\x08\x09" + bytes(6) + b"\x01\x01\x01\x01",  # timestamps with length 9
    b"\x05\x0b" + bytes(10),  # SACK with a partial block
]


class StackMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.core = RecordingCore(CoreConfig(tcp_buffer=LIMIT, send_high_water=HIGH, initial_cwnd=4096,
                                    tcp_idle_timeout=60.0, fin_timeout=10.0, time_wait=2.0),
                         isn=self._isn)
        self.isn_n = 0
        self.now = 1000.0
        self.flows: list[Flow] = []

    def _isn(self) -> int:
        self.isn_n += 1
        return (0xFFFFF000 + 0x10000 * self.isn_n) & M32  # near the wrap, to exercise it

    # --- plumbing -------------------------------------------------------------------------------

    def flow(self, i: int) -> Flow:
        return self.flows[i % len(self.flows)]

    def settle(self) -> None:
        """Drain the core, check and route every packet, account for events."""
        for packet in self.core.drain(self.now):
            seg = parse_emitted(packet)
            for f in self.flows:
                if (seg.dst, seg.dport, seg.src, seg.sport) == (ip_bytes(f.src), f.sport, ip_bytes(f.dst), f.dport):
                    f.inbox.append(seg)
                    break
            else:
                assert seg.flags & RST, f"a non-RST packet to no flow: {seg}"
        for ev in self.core.take_events():
            if isinstance(ev, (events.TcpClosed, events.TcpReset)):
                flow = self.core.model[ev.handle]
                assert not flow.released, f"an end event for a released handle: {ev}"
                flow.closed_events += 1
                assert flow.conn.state is State.CLOSED
                assert isinstance(ev, events.TcpReset) is flow.conn.closed_reset, f"{ev} after {flow.transitions}"
            else:
                assert not isinstance(ev, events.TcpOpened), "a connection request outside a SYN"

    def send(self, f: Flow, flags: int, off: int, payload: bytes = b"", win: int = 65535,
             sack: list[tuple[int, int]] | None = None, seq: int | None = None) -> None:
        opts = b""
        if f.ts:
            opts += b"\x01\x01\x08\x0a" + struct.pack("!II", int(self.now * 1000) & M32, f.stack_tsval)
        if sack:
            opts += b"\x01\x01\x05" + bytes((2 + 8 * len(sack),)) + b"".join(
                struct.pack("!II", a & M32, b & M32) for a, b in sack)
        ack = 0
        if f.stack_iss1 is not None and flags & ACK:
            ack = f.peer_ack
            if not flags & (SYN | RST):
                f.peer_right = max(f.peer_right, f.rcv_len + (win << (f.wscale or 0)))
        packet = tcp(f.src, f.dst, f.sport, f.dport, f.peer_seq(off) if seq is None else seq, ack, flags, win,
                     opts, payload)
        self.core.feed(packet, self.now)
        self.settle()

    def receive(self, f: Flow, seg: Emitted) -> None:
        """The peer takes one segment from the stack."""
        if seg.flags & RST:
            f.reset_seen = f.reset_seen or f.conn.state is State.CLOSED
            return
        assert seg.flags & ACK, "a segment without ACK"
        if f.ts:
            assert 8 in seg.options and len(seg.options[8]) == 8, "timestamps negotiated but missing"
            f.stack_tsval = struct.unpack("!I", seg.options[8][:4])[0]
        else:
            assert 8 not in seg.options, "timestamps not negotiated"
        if seg.flags & SYN:
            assert seg.ack == (f.irs + 1) & M32 and not seg.payload and not seg.flags & FIN
            assert 2 in seg.options, "SYN-ACK without MSS"
            assert (4 in seg.options) == f.sack, "SACK-permitted not echoed as offered"
            assert (3 in seg.options) == (f.wscale is not None), "window scale not echoed as offered"
            if f.stack_iss1 is not None:
                assert f.stack_iss1 == (seg.seq + 1) & M32, "SYN-ACK with another ISS"
            f.stack_iss1 = (seg.seq + 1) & M32
            f.stack_wscale = seg.options[3][0] if 3 in seg.options else 0
            f.max_right = max(f.max_right, seg.win)
            return
        assert f.stack_iss1 is not None, "data before the SYN-ACK"
        # What the stack acknowledges must have been sent by the peer.
        ack_off = seq_delta(seg.ack, (f.irs + 1) & M32)
        contig = f.contiguous(f.sent)
        fin_bonus = 1 if f.fin_off is not None and f.fin_off <= contig else 0
        assert 0 <= ack_off <= contig + fin_bonus, f"ACK {ack_off} beyond what the peer sent ({contig})"
        if fin_bonus and ack_off == contig + 1:
            assert f.fin_off == contig
        assert ack_off >= f.last_ack_off, "the cumulative ACK moved back"
        f.last_ack_off = ack_off
        right = ack_off + (seg.win << f.stack_wscale)
        assert right >= f.max_right - ((1 << f.stack_wscale) - 1), (
            f"window shrank: right edge {right} < {f.max_right}")
        f.max_right = max(f.max_right, right)
        if 5 in seg.options:
            assert f.sack, "SACK blocks without SACK-permitted"
            blob = seg.options[5]
            assert len(blob) % 8 == 0 and 8 <= len(blob) <= 32
            for k in range(0, len(blob), 8):
                a, b = struct.unpack_from("!II", blob, k)
                a, b = seq_delta(a, (f.irs + 1) & M32), seq_delta(b, (f.irs + 1) & M32)
                assert ack_off < a < b <= f.sent_max, f"SACK block {a}-{b} outside ({ack_off}, {f.sent_max}]"
                assert f.contiguous([r for r in f.sent if r[1] > a] + [(0, a)]) >= b, "SACKed unsent data"
        # The stack's data must be exactly what the app wrote, at the right place.
        off = seq_delta(seg.seq, f.stack_iss1)
        n = len(seg.payload)
        if n:
            assert 0 <= off and off + n <= f.written, f"stack sent {off}+{n}, app wrote {f.written}"
            assert seg.payload == stream(f.tag_down, off, n), "corrupted stack data"
            probes = self.core.counters.get("tcp_window_probe", 0)
            assert off + n <= f.peer_right + probes, f"sent {off}+{n} beyond the peer's window {f.peer_right}"
            f.got.append((off, off + n))
        if seg.flags & FIN:
            assert f.shut, "FIN without a shutdown"
            assert off + n == f.written, f"FIN at {off + n}, app wrote {f.written}"
            f.stack_fin_off = off + n
        elif not n:
            assert 0 <= off <= f.written + 1

    def deliver(self, f: Flow, lose: list[bool]) -> None:
        inbox, f.inbox = f.inbox, []
        for k, seg in enumerate(inbox):
            if k < len(lose) and lose[k]:
                continue
            self.receive(f, seg)

    # --- rules: the peer ------------------------------------------------------------------------

    @initialize(version=st.sampled_from([4, 6]), mss=st.integers(64, 1460), wscale=st.none() | st.integers(0, 14),
                sack=st.booleans(), ts=st.booleans(), irs=st.integers(0, M32), handshake=st.booleans())
    def first_flow(self, version: int, mss: int, wscale: int | None, sack: bool, ts: bool, irs: int,
                   handshake: bool) -> None:
        """Start with one flow, often already established, so short examples reach deep states."""
        self.open_flow(version, mss, wscale, sack, ts, irs)
        if handshake:
            f = self.flows[0]
            self.app_accept(0)
            self.deliver(f, [])
            self.send(f, ACK, 0, win=65535)
            assert f.conn.state is State.ESTABLISHED

    def teardown(self) -> None:
        for f in self.flows:  # coverage report for --hypothesis-show-statistics
            for _before, _what, after in f.transitions:
                event(f"reached {after.value}")
            if f.read:
                event("app read data")
            if f.rcv_len:
                event("peer received data")
        for name in self.core.counters:
            event(f"counter {name}")

    @precondition(lambda self: 0 < len(self.flows) < MAX_FLOWS)
    @rule(version=st.sampled_from([4, 6]), mss=st.integers(64, 1460), wscale=st.none() | st.integers(0, 14),
          sack=st.booleans(), ts=st.booleans(), irs=st.integers(0, M32))
    def open_flow(self, version: int, mss: int, wscale: int | None, sack: bool, ts: bool, irs: int) -> None:
        src, dst = ADDRS[version]
        n = len(self.flows)
        packet = tcp(src, dst, 40000 + n, 443, irs, 0, SYN, 64240,
                     syn_opts(mss, wscale, sack, (1, 0) if ts else None))
        self.core.feed(packet, self.now)
        (ev,) = self.core.take_events()
        assert isinstance(ev, events.TcpOpened) and ev.pending
        assert (ev.src_ip, ev.src_port, ev.dst_ip, ev.dst_port) == (ip_bytes(src), 40000 + n, ip_bytes(dst), 443)
        conn = self.core.tcp_handles[ev.handle]
        assert conn.state is State.SYN_PENDING
        conn.__class__ = RecordingConn
        f = Flow(n, version, src, dst, 40000 + n, 443, irs, mss, wscale, sack, ts, conn)
        self.core.model[ev.handle] = f
        self.flows.append(f)
        assert self.core.drain(self.now) == [], "a lazy core answered a SYN before accept"

    @precondition(lambda self: self.flows)
    @rule(i=st.integers(0, MAX_FLOWS - 1))
    def peer_syn_again(self, i: int) -> None:
        f = self.flow(i)
        if f.conn.state is State.CLOSED:
            return  # a new SYN would open a new connection on the same ports
        self.core.feed(tcp(f.src, f.dst, f.sport, f.dport, f.irs, 0, SYN, 64240,
                           syn_opts(f.mss, f.wscale, f.sack, (2, 0) if f.ts else None)), self.now)
        self.settle()

    @precondition(lambda self: self.flows)
    @rule(i=st.integers(0, MAX_FLOWS - 1), lose=st.lists(st.booleans(), max_size=8), ack=st.booleans(),
          win=st.sampled_from([0, 300, 65535, 65535]))
    def peer_receive(self, i: int, lose: list[bool], ack: bool, win: int) -> None:
        """The peer takes what the stack sent (some lost on the way) and maybe ACKs it."""
        f = self.flow(i)
        self.deliver(f, lose)
        if ack and f.stack_iss1 is not None:
            self.send(f, ACK, f.sent_max + (1 if f.fin_off is not None else 0), win=win)

    @precondition(lambda self: any(f.stack_iss1 is not None for f in self.flows))
    @rule(i=st.integers(0, MAX_FLOWS - 1), win=st.sampled_from([0, 1, 300, 4000, 65535]),
          sack=st.sampled_from(["none", "real", "bogus"]), bogus=st.tuples(st.integers(-3000, 3000),
                                                                             st.integers(0, 3000)))
    def peer_ack(self, i: int, win: int, sack: str, bogus: tuple[int, int]) -> None:
        f = self.flow(i)
        if f.stack_iss1 is None:
            return
        assert f.stack_iss1 is not None
        blocks: list[tuple[int, int]] = []
        rcv = f.rcv_len
        if sack == "real":
            ranges = sorted(r for r in f.got if r[0] > rcv)
            for a, b in ranges[-3:]:
                blocks.append((f.stack_iss1 + a, f.stack_iss1 + b))
        elif sack == "bogus":
            a = rcv + bogus[0]
            blocks.append((f.stack_iss1 + a, f.stack_iss1 + a + bogus[1]))
        self.send(f, ACK, f.sent_max + (1 if f.fin_off is not None else 0), win=win, sack=blocks or None)

    @precondition(lambda self: any(f.stack_iss1 is not None for f in self.flows))
    @rule(i=st.integers(0, MAX_FLOWS - 1), delta=st.integers(-1500, 9000), size=st.integers(0, 1460),
          fin=st.booleans())
    def peer_data(self, i: int, delta: int, size: int, fin: bool) -> None:
        """A data segment anywhere near the window: in order, out of order, duplicated or overlapping."""
        f = self.flow(i)
        if f.stack_iss1 is None:
            return
        off = max(0, f.last_ack_off + delta)
        size = min(size, f.mss)
        if f.fin_off is not None:
            off = min(off, f.fin_off)
            size = min(size, f.fin_off - off)
            fin = fin and off + size == f.fin_off
        elif fin:
            size = max(size, f.sent_max - off)  # the FIN goes after everything sent so far
            if size > f.mss:
                fin = False
                size = f.mss
        if not size and not fin:
            return
        if size:
            f.sent.append((off, off + size))
            f.sent_max = max(f.sent_max, off + size)
        if fin:
            f.fin_off = off + size
        self.send(f, ACK | PSH | (FIN if fin else 0), off, stream(f.tag_up, off, size))

    @precondition(lambda self: any(f.stack_iss1 is not None for f in self.flows))
    @rule(i=st.integers(0, MAX_FLOWS - 1), size=st.integers(1, 1460), order=st.permutations(range(6)),
          dups=st.lists(st.integers(0, 5), max_size=3), skew=st.integers(-200, 200), read=st.booleans())
    def peer_burst(self, i: int, size: int, order: list[int], dups: list[int], skew: int, read: bool) -> None:
        """Six segments after the peer's in-order data, sent shuffled, some twice, some overlapping."""
        f = self.flow(i)
        if f.stack_iss1 is None or f.fin_off is not None:
            return
        size = min(size, f.mss)
        base = f.contiguous(f.sent)
        for k in [*order, *dups]:
            off = max(0, base + k * size + (skew if k % 2 else 0))
            n = size if k % 2 == 0 else min(size, f.mss)
            f.sent.append((off, off + n))
            f.sent_max = max(f.sent_max, off + n)
            self.send(f, ACK | PSH, off, stream(f.tag_up, off, n))
        if read:
            self.app_read(i, 1 << 14)

    @precondition(lambda self: self.flows)
    @rule(i=st.integers(0, MAX_FLOWS - 1), valid=st.sampled_from([False, False, False, False, True]), side=st.sampled_from([-1, 1]),
          delta=st.integers(0, 1 << 20), with_ack=st.booleans())
    def peer_rst(self, i: int, valid: bool, side: int, delta: int, with_ack: bool) -> None:
        f = self.flow(i)
        state = f.conn.state
        if valid:
            # SEG.SEQ == RCV.NXT must always be accepted (RFC 5961 3.2).  The peer's last ACK may be
            # stale (lost ACKs), so take RCV.NXT from the connection itself.
            seq = (f.irs + 1 + f.conn.rcv_nxt + (1 if f.conn.fin_rcvd else 0)) & M32
        else:
            seq = (f.irs + 1 + f.last_ack_off + side * ((1 << 30) + delta)) & M32
        self.send(f, RST | (ACK if with_ack and f.stack_iss1 is not None else 0), 0, seq=seq)
        if state is State.CLOSED:
            return
        if valid or state is State.SYN_PENDING:
            assert f.conn.state is State.CLOSED, f"a valid RST left the connection in {f.conn.state}"
            assert f.conn.closed_reset
        else:
            assert f.conn.state is state, "an out-of-window RST changed the state"
            assert not f.inbox or all(not s.flags & RST for s in f.inbox)

    @precondition(lambda self: self.flows)
    @rule(i=st.integers(0, MAX_FLOWS - 1), kind=st.sampled_from(["truncate", "flip", "offset", "options",
                                                                  "random", "ipflip"]),
          pos=st.integers(0, 1 << 16), bit=st.integers(0, 7), junk=st.binary(max_size=80))
    def peer_garbage(self, i: int, kind: str, pos: int, bit: int, junk: bytes) -> None:
        f = self.flow(i)
        payload = stream(b"junk", pos, pos % 200)
        flags = ACK | (SYN if pos % 3 == 0 else 0) | (FIN if pos % 5 == 0 else 0)
        ack = f.peer_ack if f.stack_iss1 is not None else 0
        good = tcp(f.src, f.dst, f.sport, f.dport, f.peer_seq(f.last_ack_off), ack, flags, 65535, b"", payload)
        iph = 20 if f.version == 4 else 40
        if kind == "truncate":
            packet = good[:pos % len(good)]
        elif kind == "flip":
            k = iph + pos % (len(good) - iph)
            packet = good[:k] + bytes((good[k] ^ (1 << bit),)) + good[k + 1:]
        elif kind == "offset":
            mutable = bytearray(good)
            mutable[iph + 12] = (pos % 5 if pos % 2 else 15) << 4
            packet = bytes(mutable)  # a bad offset, or a valid one and a bad checksum
        elif kind == "options":
            packet = tcp(f.src, f.dst, f.sport, f.dport, f.peer_seq(f.last_ack_off), ack, ACK, 65535,
                         BAD_OPTIONS[pos % len(BAD_OPTIONS)], payload)
        elif kind == "ipflip" and f.version == 4:
            k = pos % 20
            packet = good[:k] + bytes((good[k] ^ (1 << bit),)) + good[k + 1:]
        else:
            packet = junk
        before = sum(self.core.counters.values())
        states = [(g.conn.state, len(g.conn.rcvbuf), g.conn.snd_una) for g in self.flows]
        self.core.feed(packet, self.now)
        assert sum(self.core.counters.values()) > before, f"malformed packet not counted ({kind})"
        assert self.core.drain(self.now) == [], f"a malformed packet was answered ({kind})"
        assert not self.core.events
        assert states == [(g.conn.state, len(g.conn.rcvbuf), g.conn.snd_una) for g in self.flows]

    @precondition(lambda self: any(f.stack_iss1 is not None for f in self.flows))
    @rule(i=st.integers(0, MAX_FLOWS - 1), up=st.integers(0, 3000), down=st.integers(0, 3000),
          fin=st.sampled_from([False, False, False, True]), shut=st.sampled_from([False, False, False, True]))
    def exchange(self, i: int, up: int, down: int, fin: bool, shut: bool) -> None:
        """A well-behaved round trip (app writes, peer sends in order, both sides ACK, app reads)."""
        f = self.flow(i)
        if f.stack_iss1 is None:
            return
        if down:
            self.app_write(i, down)
        if shut:
            self.app_shutdown(i)
        self.deliver(f, [])
        off = f.contiguous(f.sent)
        if f.fin_off is None and (up or fin):
            size = min(up, f.mss, max(0, f.max_right - off))
            fin = fin and off + size >= f.sent_max
            if size:
                f.sent.append((off, off + size))
                f.sent_max = max(f.sent_max, off + size)
            if fin:
                f.fin_off = off + size
            if size or fin:
                self.send(f, ACK | PSH | (FIN if fin else 0), off, stream(f.tag_up, off, size))
        self.send(f, ACK, f.sent_max + (1 if f.fin_off is not None else 0))
        self.app_read(i, 1 << 14)
        self.deliver(f, [])

    # --- rules: the app -------------------------------------------------------------------------

    @precondition(lambda self: self.flows)
    @rule(i=st.integers(0, MAX_FLOWS - 1))
    def app_accept(self, i: int) -> None:
        f = self.flow(i)
        if f.released or f.conn.state is not State.SYN_PENDING:
            return
        self.core.tcp_accept(f.conn.handle, self.now)
        self.settle()
        assert f.conn.state is State.SYN_RCVD  # type: ignore[comparison-overlap]
        assert any(s.flags == SYN | ACK for s in f.inbox), "accept sent no SYN-ACK"

    @precondition(lambda self: self.flows)
    @rule(i=st.integers(0, MAX_FLOWS - 1), really=st.sampled_from([False, False, False, True]))
    def app_abort(self, i: int, really: bool) -> None:
        f = self.flow(i)
        state = f.conn.state
        if f.released or state is State.CLOSED or not really:
            return  # (rarely, so that flows live long enough to reach deep states)
        self.core.tcp_abort(f.conn.handle, self.now)
        f.released = True
        self.settle()
        assert f.conn.state is State.CLOSED and f.conn.closed_reset
        if state is not State.TIME_WAIT:
            assert f.inbox and f.inbox[-1].flags & RST, "abort sent no RST"

    @precondition(lambda self: self.flows)
    @rule(i=st.integers(0, MAX_FLOWS - 1), n=st.integers(1, MAX_WRITE))
    def app_write(self, i: int, n: int) -> None:
        f = self.flow(i)
        conn = f.conn
        if f.released or f.shut or conn.state not in SENDING or len(conn.sndbuf) > HIGH:
            return  # what the link does: no writes after EOF, wait below the high-water mark
        below = self.core.tcp_write(conn.handle, stream(f.tag_down, f.written, n), self.now)
        assert below is (len(conn.sndbuf) <= HIGH)
        f.written += n
        self.settle()

    @precondition(lambda self: self.flows)
    @rule(i=st.integers(0, MAX_FLOWS - 1), n=st.integers(1, 1 << 14))
    def app_read(self, i: int, n: int) -> None:
        f = self.flow(i)
        if f.released or f.read_closed:
            return
        conn = f.conn
        data = self.core.tcp_read(conn.handle, n, self.now)
        if data is None:
            assert not conn.rcvbuf and not conn.fin_rcvd and conn.state is not State.CLOSED and conn.want_read
            return
        if not data:
            assert not conn.rcvbuf and (conn.fin_rcvd or conn.state is State.CLOSED)
            f.eof_read = True
        assert len(data) <= n
        if data:
            f.read += data
            assert len(f.read) <= f.contiguous(f.sent), "the app read bytes the peer never sent"
            assert f.read[-len(data):] == stream(f.tag_up, len(f.read) - len(data), len(data)), (
                "the app read corrupted, reordered or duplicated data")
        self.settle()

    @precondition(lambda self: self.flows)
    @rule(i=st.integers(0, MAX_FLOWS - 1))
    def app_shutdown(self, i: int) -> None:
        f = self.flow(i)
        if f.released or f.conn.state is State.CLOSED or f.conn.state is State.SYN_PENDING:
            return  # the link aborts a pending connection instead
        self.core.tcp_shutdown(f.conn.handle, self.now)
        f.shut = True
        self.settle()

    @precondition(lambda self: self.flows)
    @rule(i=st.integers(0, MAX_FLOWS - 1))
    def app_close(self, i: int) -> None:
        f = self.flow(i)
        if f.released or f.conn.state is State.CLOSED or f.conn.state is State.SYN_PENDING:
            return
        self.core.tcp_close(f.conn.handle, self.now)
        f.shut = f.read_closed = f.released = True
        self.settle()
        assert not f.conn.rcvbuf

    # --- rules: time ----------------------------------------------------------------------------

    @rule(dt=st.floats(0.0, 3.0) | st.sampled_from([0.2, 1.0, 1.0, 15.0, 70.0]))
    def advance(self, dt: float) -> None:
        target = self.now + dt
        while (t := self.core.next_timer()) is not None and t <= target:
            self.now = max(self.now, t)
            self.core.handle_timer(self.now)
            self.settle()
            nt = self.core.next_timer()
            assert nt is None or nt > self.now, f"a due timer was not handled: {nt} <= {self.now}"
        self.now = target
        self.settle()

    @precondition(lambda self: self.core.next_timer() is not None)
    @rule()
    def fire_next_timer(self) -> None:
        """Jump to the next deadline if it is a retransmission-scale one (not an idle timeout)."""
        t = self.core.next_timer()
        assert t is not None
        if t > self.now + 10.0:
            return
        self.now = max(self.now, t)
        self.core.handle_timer(self.now)
        self.settle()
        nt = self.core.next_timer()
        assert nt is None or nt > self.now, f"a due timer was not handled: {nt} <= {self.now}"

    # --- invariants -----------------------------------------------------------------------------

    @invariant()
    def per_flow(self) -> None:
        for f in self.flows:
            conn = f.conn
            assert conn.state is f.model_state, f"state {conn.state} set outside the table ({f.model_state})"
            ooo = conn.ooo.size if conn.ooo is not None else 0
            assert len(conn.rcvbuf) + ooo <= LIMIT, f"receive memory {len(conn.rcvbuf)}+{ooo} > {LIMIT}"
            assert len(conn.sndbuf) <= HIGH + MAX_WRITE, f"send buffer {len(conn.sndbuf)}"
            assert conn.snd_una <= conn.snd_nxt <= conn.snd_max <= conn.snd_una + len(conn.sndbuf) + 1
            assert f.read == stream(f.tag_up, 0, len(f.read))
            if conn.state is State.CLOSED:
                want = 0 if f.released else 1  # released handles hear nothing more
                assert f.closed_events == want, f"{f.closed_events} TcpClosed/TcpReset events, expected {want}"
                assert all(c is not conn for c in self.core.conns.values())
            else:
                assert f.closed_events == 0
                assert self.core.conns.get((ip_bytes(f.src), f.sport, ip_bytes(f.dst), f.dport)) is conn


TestStackStateful = StackMachine.TestCase
TestStackStateful.settings = settings(max_examples=400, stateful_step_count=40, deadline=None,
                                      derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def test_write_before_accept_sends_nothing() -> None:
    """Found by the machine: the link lets the app write before accept; nothing may leave before the SYN-ACK."""
    core = Core(CoreConfig(), isn=lambda: 1000)
    core.feed(tcp("10.0.0.2", "1.2.3.4", 40000, 80, 0, 0, SYN, 64240, syn_opts()), 0.0)
    (ev,) = core.take_events()
    assert isinstance(ev, events.TcpOpened)
    conn = core.tcp_handles[ev.handle]
    core.tcp_write(ev.handle, b"xy", 0.0)
    assert core.drain(0.0) == []
    now = 0.0
    while (t := core.next_timer()) is not None and t < 3.0:
        now = t
        core.handle_timer(now)
        sent = [parse_emitted(p) for p in core.drain(now)]
        assert sent == [], f"sent in {conn.state}: {sent}"
