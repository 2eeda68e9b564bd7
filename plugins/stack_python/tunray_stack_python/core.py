"""The sans-IO stack: packets in, events and packets out, time passed in.

:class:`Core` implements :class:`tunray.stackcore.StackCore` (the rules for handles,
events and backpressure are there) and runs under :class:`tunray.stackdriver.StackDriver`;
tests and benchmarks drive it directly::

    core.feed(packet, now)        # as many as were read in one wakeup
    core.drain(now) -> [packets]  # ACKs and data the batch caused; write them all
    core.take_events()            # stackcore events naming handles
    core.next_timer() / core.handle_timer(now)

Driver operations by handle (``tcp_accept``, ``tcp_read``, ``tcp_write``, ``tcp_shutdown``,
``tcp_close``, ``tcp_abort``, ``udp_recv``, ``udp_send``, ``udp_close``) mark the connection
dirty; the next :meth:`drain` sends what they caused.  ``tcp_handles`` / ``udp_handles``
map the handles the driver holds to their objects (white-box tests read them too).

Timers are a heap of ``(deadline, n, owner)`` with lazy deletion: an owner remembers
the deadline it is ``scheduled`` at and only pushes an earlier one, so a connection
whose RTO moves later on every ACK costs no heap work; an entry that fires early just
reschedules.  Nothing here raises on bad input: drops are counted by reason.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass

from tunray.halfopen import EVICTED, HalfOpenTable
from tunray.net.packet import (
    BAD_TCP_FLAGS,
    GSO_NONE,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    VNET_F_DATA_VALID,
    VNET_F_NEEDS_CSUM,
    VNET_LEN,
    echo_reply,
    ip_header,
    parse_ip,
    parse_vnet,
    pseudo_sum,
    sum_of,
    valid,
    vnet_header,
)
from tunray.stackbudget import BufferBudget
from tunray.stackcore import (
    CoreEvent,
    SendClosed,
    TcpClosed,
    TcpOpened,
    TcpReset,
)
from tunray.stackudp import UdpTable

from tunray_stack_python.settings import DEFAULTS
from tunray_stack_python.synflood import SynCookies
from tunray_stack_python.tcp import TcpConn
from tunray_stack_python.tcp_base import INF
from tunray_stack_python.tcp_state import FIN_QUEUED, State
from tunray_stack_python.tcp_wire import ACK, HEADER, RST, SYN, Options, parse_options, syn_options


@dataclass(slots=True)
class CoreConfig:
    mtu: int = 1500
    vnet_hdr: bool = False
    gso: bool = False  # send TCP super-segments (needs vnet_hdr)
    eager: bool = False
    tcp_buffer: int = 4 << 20
    send_high_water: int = DEFAULTS.send_high_water
    initial_cwnd: int = DEFAULTS.initial_cwnd
    tcp_idle_timeout: float = 300.0
    handshake_timeout: float = 4.0
    time_wait: float = float(DEFAULTS.time_wait)
    fin_timeout: float = float(DEFAULTS.fin_timeout)
    udp_idle_timeout: float = 60.0
    udp_queue_packets: int = 1024
    max_flows: int = 65536
    max_half_open: int = 256  # SYNs whose handshake is not complete (see synflood.py)
    max_half_open_per_source: int = 64
    max_buffered: int = 64 << 20  # bytes from apps held for all TCP flows together; 0: no budget


Owner = TcpConn
TIMER_SLACK = 256  # stale timer entries tolerated beyond twice the live connections


def _drop_buffers(conn: TcpConn) -> None:
    """A closed connection nobody holds: what it received and nobody will read goes now."""
    conn.close_read()
    conn.release_budget()


class Core:
    def __init__(self, config: CoreConfig, isn: Callable[[], int] | None = None) -> None:
        self.config = config
        self.isn = isn or (lambda: random.getrandbits(32))
        self.now = 0.0
        self.out: list[bytes] = []
        self.events: list[CoreEvent] = []
        self.counters: dict[str, int] = {}
        self.conns: dict[tuple[bytes, int, bytes, int], TcpConn] = {}
        self.tcp_handles: dict[int, TcpConn] = {}
        self._last_handle = 0
        self._dirty: dict[TcpConn, None] = {}
        self._timers: list[tuple[float, int, Owner]] = []
        self._timer_n = 0
        # Half-open connections, oldest first: all of them, and per source address.
        self.half_open = HalfOpenTable(config.max_half_open, config.max_half_open_per_source,
                                       config.handshake_timeout)
        self.cookies = SynCookies()
        self.budget = BufferBudget(config.max_buffered, self.count) if config.max_buffered else None
        self.udp = UdpTable(mtu=config.mtu, vnet_hdr=config.vnet_hdr, idle_timeout=config.udp_idle_timeout,
                            queue_packets=config.udp_queue_packets, count=self.count,
                            events=lambda ev: self.events.append(ev), out=lambda p: self.out.append(p),
                            new_handle=self._udp_handle, budget=self.budget)

    @property
    def udp_handles(self) -> dict[int, object]:
        """The UDP flows the driver holds, by handle (white-box tests)."""
        return self.udp.handles  # type: ignore[return-value]

    def _udp_handle(self) -> int | None:
        if len(self.udp) + len(self.conns) >= self.config.max_flows:
            return None
        self._last_handle += 1
        return self._last_handle

    def count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    # --- input -----------------------------------------------------------------------------

    def feed(self, packet: bytes, now: float) -> None:
        """Process one packet as read from the device (with its virtio header if configured)."""
        self.now = now
        start = 0
        csum_ok = False
        gso = False
        if self.config.vnet_hdr:
            vnet = parse_vnet(packet)
            if vnet is None:
                self.count("vnet_truncated")
                return
            flags, gso_type, _size = vnet
            csum_ok = bool(flags & (VNET_F_NEEDS_CSUM | VNET_F_DATA_VALID))
            gso = gso_type != GSO_NONE
            start = VNET_LEN
        parsed = parse_ip(packet, start, gso)
        if isinstance(parsed, str):
            self.count(parsed)
            return
        version, src, dst, proto, l4, end = parsed
        if proto == PROTO_TCP:
            self._tcp_input(version, src, dst, packet, l4, end, csum_ok, now)
        elif proto == PROTO_UDP:
            self.udp.input(version, src, dst, packet, l4, end, csum_ok, now)
        elif (proto == PROTO_ICMP and version == 4) or (proto == PROTO_ICMPV6 and version == 6):
            reply = echo_reply(version, src, dst, packet[l4:end], self.config.vnet_hdr)
            if type(reply) is str:
                self.count(reply)
            else:
                self.count("icmp_echo_replied")
                self.out.append(reply)  # type: ignore[arg-type]
        else:
            self.count("ip_unknown_protocol")

    def _tcp_input(self, version: int, src: bytes, dst: bytes, packet: bytes, l4: int, end: int,
                   csum_ok: bool, now: float) -> None:
        if end - l4 < 20:
            self.count("tcp_truncated")
            return
        sport, dport, seq, ack, off_byte, flags, win, _c, _u = HEADER.unpack_from(packet, l4)
        hlen = (off_byte >> 4) * 4
        if hlen < 20 or l4 + hlen > end:
            self.count("tcp_bad_offset")
            return
        view = memoryview(packet)
        if not csum_ok and not valid(pseudo_sum(src, dst, PROTO_TCP, end - l4) + sum_of(view[l4:end])):
            self.count("tcp_bad_checksum")
            return
        if BAD_TCP_FLAGS[flags]:  # SYN+FIN, SYN+RST, FIN without ACK, no flags...
            self.count("tcp_bad_flags")
            return
        ts: tuple[int, int] | None = None
        sack: list[tuple[int, int]] | None = None
        opts: Options | None = None
        if hlen > 20:
            parsed = parse_options(packet, l4 + 20, l4 + hlen)
            if parsed is None:
                self.count("tcp_bad_options")
                return
            if type(parsed) is tuple:
                ts = parsed
            else:
                opts = parsed  # type: ignore[assignment]
                assert opts is not None
                ts = opts.ts
                sack = opts.sack or None
        conn = self.conns.get((src, sport, dst, dport))
        if conn is None:
            self._tcp_new(version, src, sport, dst, dport, seq, ack, flags, opts, end - l4 - hlen, now)
            conn = self.conns.get((src, sport, dst, dport))
            if conn is None or conn.state is not State.SYN_RCVD or flags & SYN:
                return
            # a cookie ACK just created conn: this segment completes its handshake (and may carry data)
        conn.on_segment(seq, ack, flags, win, ts, sack, view[l4 + hlen:end], now)
        if conn.ack_now and conn.state is not State.CLOSED:
            conn.send_ack(now)
        self._dirty[conn] = None

    def _tcp_new(self, version: int, src: bytes, sport: int, dst: bytes, dport: int, seq: int, ack: int,
                 flags: int, opts: Options | None, payload_len: int, now: float) -> None:
        if flags & RST:
            self.count("tcp_rst_unknown")
            return
        if flags & (SYN | ACK) != SYN:
            if (flags & SYN == 0 and self.counters.get("tcp_syn_cookies_sent")
                    and (mss := self.cookies.check(src, sport, dst, dport, seq, ack, now))):
                self._cookie_conn(version, src, sport, dst, dport, seq, ack, mss, now)
                return  # the caller feeds this very ACK to the new connection
            self.count("tcp_no_connection")
            self.send_rst(version, dst, src, dport, sport, ack, 0, False)  # an ACK: RST seq = its ack
            return
        if len(self.conns) >= self.config.max_flows:
            self.count("tcp_max_flows")
            self.send_rst(version, dst, src, dport, sport, 0, seq + 1, True)
            return
        o = opts or Options()
        half_open = self.half_open
        for stale in half_open.stale(now):  # (only when full) past the handshake timeout: reset, oldest first
            assert isinstance(stale, TcpConn)
            self.count(EVICTED)
            stale.abort()
            self.handshake_done(stale)
        if half_open.over(src):
            self._send_cookie(version, src, sport, dst, dport, seq, o.mss, now)
            return
        key = (src, sport, dst, dport)
        self._last_handle = handle = self._last_handle + 1
        conn = TcpConn(self, key, version, self.isn() & 0xFFFFFFFF, handle)
        conn.on_syn(seq, o.mss, o.wscale, o.sack_ok, o.ts, now)
        self.conns[key] = conn
        self.tcp_handles[handle] = conn
        half_open.add(conn, src, now)
        self.count("tcp_connections")
        self.events.append(TcpOpened(handle, src, sport, dst, dport, not self.config.eager))
        if self.config.eager:
            conn.accept(now)
        self._schedule(conn)

    def handshake_done(self, conn: TcpConn) -> None:
        """*conn* left the half-open state (its handshake completed, or it closed)."""
        self.half_open.remove(conn)

    def _send_cookie(self, version: int, src: bytes, sport: int, dst: bytes, dport: int, seq: int, mss: int,
                     now: float) -> None:
        """Answer a SYN the budget cannot hold with a stateless SYN-ACK (MSS option only)."""
        self.count("tcp_syn_cookies_sent")
        hdr = 40 if version == 4 else 60
        own_mss = max(min(mss or (536 if version == 4 else 1220), self.config.mtu - hdr), 64)
        cookie = self.cookies.make(src, sport, dst, dport, seq, own_mss, now)
        opts = syn_options(own_mss, -1, False, None)
        head = HEADER.pack(dport, sport, cookie, (seq + 1) & 0xFFFFFFFF, (5 + len(opts) // 4) << 4, SYN | ACK,
                           min(self.config.tcp_buffer, 0xFFFF), 0, 0) + opts
        csum = 0xFFFF - (pseudo_sum(dst, src, PROTO_TCP, len(head)) + sum_of(head)) % 0xFFFF
        head = head[:16] + csum.to_bytes(2, "big") + head[18:]
        prefix = vnet_header() if self.config.vnet_hdr else b""
        self.out.append(prefix + ip_header(version, dst, src, PROTO_TCP, len(head)) + head)

    def _cookie_conn(self, version: int, src: bytes, sport: int, dst: bytes, dport: int, seq: int, ack: int,
                     mss: int, now: float) -> TcpConn | None:
        """The connection a valid cookie ACK proves: established at once (no options but the MSS)."""
        if len(self.conns) >= self.config.max_flows:
            self.count("tcp_max_flows")
            return None
        self.count("tcp_syn_cookies_accepted")
        key = (src, sport, dst, dport)
        self._last_handle = handle = self._last_handle + 1
        # the cookie was our ISN; the ACK's seq - 1 was the client's (checked by the caller)
        conn = TcpConn(self, key, version, (ack - 1) & 0xFFFFFFFF, handle)
        conn.on_syn((seq - 1) & 0xFFFFFFFF, mss, -1, False, None, now)
        self.conns[key] = conn
        self.tcp_handles[handle] = conn
        self.count("tcp_connections")
        self.events.append(TcpOpened(handle, src, sport, dst, dport, False))
        n = len(self.out)
        conn.accept(now)  # SYN_PENDING -> SYN_RCVD; the SYN-ACK it writes went out already, statelessly
        del self.out[n:]
        self._schedule(conn)
        return conn

    def send_rst(self, version: int, src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int,
                 with_ack: bool) -> None:
        flags = RST | (ACK if with_ack else 0)
        head = HEADER.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF if with_ack else 0, 5 << 4,
                           flags, 0, 0, 0)
        csum = 0xFFFF - (pseudo_sum(src, dst, PROTO_TCP, 20) + sum_of(head)) % 0xFFFF
        head = head[:16] + csum.to_bytes(2, "big") + head[18:]
        prefix = vnet_header() if self.config.vnet_hdr else b""
        self.count("tcp_rst_sent")
        self.out.append(prefix + ip_header(version, src, dst, PROTO_TCP, 20) + head)

    # --- output and timers ----------------------------------------------------------------------

    def drain(self, now: float) -> list[bytes]:
        """Flush what the last operations caused; return (and forget) the packets to write."""
        self.now = now
        budget = self.budget
        if budget is not None and budget.waiters:  # room came back: window updates for the flows denied it
            for conn in budget.take_waiters():
                assert isinstance(conn, TcpConn)
                if conn.state is not State.CLOSED:
                    conn.ack_pending = True
                    self._dirty[conn] = None
        if self._dirty:
            dirty, self._dirty = self._dirty, {}
            for conn in dirty:
                if conn.state is not State.CLOSED:
                    conn.output(now)
                    self._schedule(conn)
        out, self.out = self.out, []
        return out

    def _schedule(self, owner: Owner) -> None:
        if owner.state is State.CLOSED:
            return
        d = owner.deadline()
        if d < owner.scheduled:
            owner.scheduled = d
            self._timer_n += 1
            heapq.heappush(self._timers, (d, self._timer_n, owner))

    def _compact_timers(self) -> None:
        """Drop stale heap entries once they outnumber the live connections.

        Lazy deletion leaves an entry behind whenever a deadline moves earlier or its
        connection closes, and a stale entry keeps its (closed) connection alive until its
        deadline passes: after a burst of short connections that was thousands of
        connections and their buffers for up to ``connIdle``.  One O(n) rebuild per n stale
        entries keeps the heap within :data:`TIMER_SLACK` of twice the live connections.
        """
        timers = self._timers
        if len(timers) <= 2 * len(self.conns) + TIMER_SLACK:
            return
        live = [e for e in timers if e[2].scheduled == e[0] and e[2].state is not State.CLOSED]
        heapq.heapify(live)
        self._timers = live

    def next_timer(self) -> float | None:
        timers = self._timers
        while timers and timers[0][2].scheduled != timers[0][0]:
            heapq.heappop(timers)
        udp = self.udp.next_timer()
        if not timers:
            return udp
        return timers[0][0] if udp is None or timers[0][0] < udp else udp

    def handle_timer(self, now: float) -> None:
        self.now = now
        timers = self._timers
        while timers and timers[0][0] <= now:
            d, _n, owner = heapq.heappop(timers)
            if owner.scheduled != d:
                continue
            owner.scheduled = INF
            if owner.state is State.CLOSED:
                continue
            owner.on_timer(now)
            if owner.state is not State.CLOSED:  # type: ignore[comparison-overlap]
                self._dirty[owner] = None
        self.udp.handle_timer(now)
        for conn in list(self._dirty):
            if conn.state is not State.CLOSED:
                self._schedule(conn)

    def release(self, conn: TcpConn) -> None:
        """Called by a connection entering CLOSED."""
        if conn.ooo is not None:  # never to be delivered (the driver may still read rcvbuf)
            conn.ooo = None
            conn.recharge()
        if conn in self.half_open:
            self.handshake_done(conn)
        if self.conns.get(conn.key) is conn:
            del self.conns[conn.key]
        self._dirty.pop(conn, None)
        if conn.held:
            self.events.append(TcpReset(conn.handle) if conn.closed_reset else TcpClosed(conn.handle))
        else:
            _drop_buffers(conn)
        self._compact_timers()

    # --- the StackCore protocol: events, stats --------------------------------------------------

    def take_events(self) -> list[CoreEvent]:
        evs = self.events
        if evs:
            self.events = []
        return evs

    def stats(self) -> dict[str, int]:
        out = {"tcp_open": len(self.conns), "tcp_half_open": len(self.half_open), "udp_open": len(self.udp)}
        if self.budget is not None:
            out.update(self.budget.stats())
        return out

    def reset_all(self, now: float) -> None:
        self.now = now
        for conn in list(self.conns.values()):
            conn.abort()
        self.udp.reset_all()

    # --- the StackCore protocol: TCP by handle --------------------------------------------------

    def tcp_accept(self, handle: int, now: float) -> None:
        conn = self.tcp_handles[handle]
        if conn.state is State.SYN_PENDING:
            self.now = now
            conn.accept(now)
            self._dirty[conn] = None

    def tcp_read(self, handle: int, max_bytes: int, now: float) -> bytes | None:
        conn = self.tcp_handles[handle]
        if conn.rcvbuf:
            self.now = now
            data = conn.read(max_bytes)
            if conn.ack_pending:
                self._dirty[conn] = None
            return data
        if conn.fin_rcvd or conn.state is State.CLOSED:
            return b""
        conn.want_read = True
        return None

    def tcp_write(self, handle: int, data: bytes | bytearray | memoryview, now: float) -> bool:
        conn = self.tcp_handles[handle]
        state = conn.state
        if state is State.CLOSED or conn.fin_wanted or state in FIN_QUEUED:
            raise SendClosed("the connection is closed")
        self.now = now
        conn.sndbuf += data
        self._dirty[conn] = None
        if len(conn.sndbuf) > self.config.send_high_water:
            conn.want_write = True
            return False
        return True

    def tcp_writable(self, handle: int) -> bool:
        conn = self.tcp_handles[handle]
        if conn.state is not State.CLOSED and len(conn.sndbuf) > self.config.send_high_water:
            conn.want_write = True
            return False
        return True

    def tcp_shutdown(self, handle: int, now: float) -> None:
        conn = self.tcp_handles[handle]
        if conn.state is not State.CLOSED:
            self.now = now
            conn.shutdown()
            self._dirty[conn] = None

    def tcp_close(self, handle: int, now: float) -> None:
        """Graceful close: FIN after the buffered data; later incoming data is discarded."""
        conn = self.tcp_handles.pop(handle)
        conn.held = conn.want_read = conn.want_write = False
        self.now = now
        if conn.state is State.SYN_PENDING:
            conn.abort()  # a SYN never answered is refused
        elif conn.state is not State.CLOSED:
            conn.close_read()
            conn.shutdown()
            self._dirty[conn] = None
        if conn.state is State.CLOSED:
            _drop_buffers(conn)

    def tcp_abort(self, handle: int, now: float) -> None:
        conn = self.tcp_handles.pop(handle)
        conn.held = conn.want_read = conn.want_write = False
        self.now = now
        conn.abort()
        _drop_buffers(conn)

    # --- the StackCore protocol: UDP by handle --------------------------------------------------

    def udp_recv(self, handle: int) -> tuple[bytes, bytes, int] | None:
        return self.udp.recv(handle)

    def udp_send(self, handle: int, data: bytes, src: bytes, sport: int, now: float) -> bool:
        """Send *data* to the flow's app as if from ``src:sport``; False (counted) if it cannot."""
        self.now = now
        return self.udp.send(handle, data, src, sport, now)

    def udp_close(self, handle: int, now: float) -> None:
        self.now = now
        self.udp.close(handle)
