"""``LwipCore``: Debian's lwIP as a :class:`~tunray.stackcore.StackCore`.

Theory of operation.  IP parsing, UDP (full-cone, :class:`~tunray.stackudp.UdpTable`),
ICMP echo and the drop counters are the shared core code; TCP is lwIP, reached through
the C glue (``glue.c``, see its header for the lwIP side).  Per packet, Python parses the
IP header and makes one C call; lwIP's callbacks never call Python, they leave events
(pointer + kind) that :meth:`LwipCore._collect` turns into stackcore events right after
each C call, so no pointer outlives the call that produced it.

Handles.  A TCP handle exists from the SYN (lazy: ``pending`` until :meth:`tcp_accept`)
or from the completed handshake (eager).  Its Python state (:class:`_Tcp`) moves through
``PENDING`` (SYN held here, lwIP has not seen it) -> ``ACCEPTING`` (SYN given to lwIP,
waiting for the final ACK) -> ``OPEN`` (a C ``tr_conn`` exists).  What the driver does
before ``OPEN`` (writes, half-close, close) is kept and replayed when lwIP accepts.
A SYN that never completes ends with :class:`~tunray.stackcore.TcpReset` after
``handshake_timeout``.

lwIP is one global instance per process (``lwip_init`` once): only one core may be
live at a time; :meth:`reset_all` ends it.
"""

from __future__ import annotations

import heapq
import weakref
from dataclasses import dataclass
from typing import Any

from tunray.halfopen import DROPPED, EVICTED, HalfOpenTable
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
    parse_ip,
)
from tunray.stackbudget import BufferBudget
from tunray.stackcore import (
    CoreEvent,
    SendClosed,
    TcpClosed,
    TcpOpened,
    TcpPeerEof,
    TcpReadable,
    TcpReset,
    TcpWritable,
)
from tunray.stackudp import UdpTable

from tunray_stack_lwip.binding import load, self_test

PENDING, ACCEPTING, OPEN = 0, 1, 2
SCRATCH = 1 << 18  # largest single tcp_read
_DROPS = {-1: "tcp_truncated", -2: "tcp_bad_offset", -3: "tcp_bad_checksum", -4: "tcp_no_memory",
          -5: "tcp_bad_port", -6: "tcp_bad_options", -7: "tcp_syn_in_connection",
          -8: "tcp_buffer_budget_out_of_order"}
WINDOW = 0xFFFF  # Debian's TCP_WND: the most one tr_input can hand to the app's buffer
_active: weakref.ref[LwipCore] | None = None  # the live core (lwIP is one instance per process)


@dataclass(slots=True)
class LwipConfig:
    mtu: int = 1500
    vnet_hdr: bool = False
    gso: bool = False  # merge lwIP's segments into GSO super-packets (needs vnet_hdr)
    mss_rewrite: bool = True  # raise the SYN-ACK's MSS option to what the MTU allows
    eager: bool = False
    send_high_water: int = 256 << 10
    rx_buffer: int = 4 << 20  # receive window cap; Debian's lwIP window is 64 KiB at most
    tcp_idle_timeout: float = 300.0
    handshake_timeout: float = 4.0
    time_wait: float = 2.0
    udp_idle_timeout: float = 60.0
    udp_queue_packets: int = 1024
    max_flows: int = 65536
    max_buffered: int = 0  # bytes from apps held for all TCP flows together (tunray.stackbudget); 0: none
    max_half_open: int = 256  # handshakes in progress (tunray.halfopen), all and per source address
    max_half_open_per_source: int = 64



class _Tcp:
    __slots__ = ("cflags", "conn", "deadline", "early", "early_len", "end", "ended", "handle", "held", "key", "l3",
                 "l4", "shut", "state", "syn", "want_read", "want_write")

    def __init__(self, handle: int, key: bytes, state: int) -> None:
        self.handle = handle
        self.key = key
        self.state = state
        self.conn: Any = None  # struct tr_conn * once OPEN
        self.syn: bytes | None = None  # the held SYN (PENDING)
        self.l3 = self.l4 = self.end = self.cflags = 0
        self.early: list[bytes] = []  # writes before OPEN
        self.early_len = 0
        self.shut = False
        self.held = True  # the driver holds the handle
        self.ended = False  # TcpClosed/TcpReset raised
        self.want_read = False
        self.want_write = False
        self.deadline = 0.0  # handshake deadline while not OPEN


def _split_key(key: bytes) -> tuple[bytes, int, bytes, int]:
    n = 4 if key[0] == 4 else 16
    return (key[1:1 + n], int.from_bytes(key[1 + n:3 + n], "big"), key[3 + n:3 + 2 * n],
            int.from_bytes(key[3 + 2 * n:5 + 2 * n], "big"))


class LwipCore:
    """The lwIP stack core; see the module docstring."""

    finished: bool  # reset_all ran: another core may start

    def __init__(self, config: LwipConfig, now: float = 0.0) -> None:
        global _active
        live = _active() if _active is not None else None
        if live is not None and not live.finished:
            raise RuntimeError("lwIP is one instance per process: another lwip stack is running")
        self.ffi, self.lib = load()
        self_test(self.ffi, self.lib, now)
        _active = weakref.ref(self)
        self.finished = False
        self.config = config
        c = config
        mss4 = c.mtu - 40 if c.mss_rewrite and c.mtu > 1500 else 0
        mss6 = c.mtu - 60 if c.mss_rewrite and c.mtu > 1500 else 0
        idle_ticks = max(1, int(c.tcp_idle_timeout / 0.5))
        self.budget = BufferBudget(c.max_buffered, self.count) if c.max_buffered else None
        self._glue = self.lib.tr_stats_ptr()
        self._rx_charged = self._glue.rx_bytes  # the glue's rx_bytes as last charged to the budget
        if self.lib.tr_setup(now, c.mtu, int(c.vnet_hdr), int(c.gso and c.vnet_hdr), mss4, mss6,
                             c.send_high_water, idle_ticks, c.rx_buffer) != 0:
            raise RuntimeError("lwIP set-up failed")
        self.now = now
        self.counters: dict[str, int] = {}
        self.events: list[CoreEvent] = []
        self.out: list[bytes] = []  # packets built in Python (UDP, ICMP echo)
        self.tcp: dict[int, _Tcp] = {}  # held handles
        self.by_key: dict[bytes, _Tcp] = {}  # PENDING and ACCEPTING, by flow key
        #: the same connections, oldest first, under maxHalfOpen/maxHalfOpenPerSource
        self.half_open = HalfOpenTable(c.max_half_open, c.max_half_open_per_source, c.handshake_timeout)
        self._hs_timers: list[tuple[float, int, _Tcp]] = []
        self._last_handle = 0
        self._tw_ticks = max(0, int(c.time_wait / 0.5))
        self._key = self.ffi.new("uint8_t[40]")
        self._keylen = self.ffi.new("size_t *")
        self._n = self.ffi.new("size_t *")
        self._recs = self.ffi.new("uint32_t **")
        self._scratch = self.ffi.new("uint8_t[]", SCRATCH)
        self._scratch_buf = self.ffi.buffer(self._scratch)
        self.udp = UdpTable(mtu=c.mtu, vnet_hdr=c.vnet_hdr, idle_timeout=c.udp_idle_timeout,
                            queue_packets=c.udp_queue_packets, count=self.count, events=self.events.append,
                            out=self.out.append, new_handle=self._udp_handle, budget=self.budget)

    def count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    def _new_handle(self) -> int:
        self._last_handle += 1
        return self._last_handle

    def _udp_handle(self) -> int | None:
        unannounced = len(self.by_key) if self.config.eager else 0
        if len(self.tcp) + unannounced + len(self.udp) >= self.config.max_flows:
            return None
        return self._new_handle()

    # --- packets ----------------------------------------------------------------------------------

    def feed(self, packet: bytes, now: float) -> None:
        self.now = now
        start = 0
        cflags = 0
        gso = False
        if self.config.vnet_hdr:
            if len(packet) < VNET_LEN:
                self.count("vnet_truncated")
                return
            flags = packet[0]
            if flags & VNET_F_NEEDS_CSUM:
                cflags = 2  # TR_IN_CSUM_PARTIAL
            elif flags & VNET_F_DATA_VALID:
                cflags = 4  # TR_IN_CSUM_VALID
            gso = packet[1] != GSO_NONE
            start = VNET_LEN
        parsed = parse_ip(packet, start, gso)
        if isinstance(parsed, str):
            self.count(parsed)
            return
        version, src, dst, proto, l4, end = parsed
        if proto == PROTO_TCP:
            if end - l4 >= 20:
                if BAD_TCP_FLAGS[packet[l4 + 13]]:  # SYN+FIN, no ACK, ...: never lwIP's
                    self.count("tcp_bad_flags")
                    return
                budget = self.budget
                if budget is not None:
                    payload = end - l4 - (packet[l4 + 12] >> 4) * 4
                    if payload > 0:
                        room = budget.room() - (self._glue.rx_bytes - self._rx_charged)
                        if payload > room:
                            # no room for what it carries: unacknowledged, the app sends it again
                            budget.denied(self)
                            return
                        if room - payload < WINDOW:  # lwIP's out-of-order queue could overflow the room
                            cflags |= 8  # TR_IN_TIGHT
            r = self.lib.tr_input(packet, start, l4, end, cflags, now, self._key, self._keylen)
            if r == 2:
                self._collect()
            elif r == 1:
                self._new_syn(packet, start, l4, end, cflags, now)
            elif r < 0:
                self.count(_DROPS.get(r, "tcp_dropped"))
        elif proto == PROTO_UDP:
            self.udp.input(version, src, dst, packet, l4, end, cflags != 0, now)
        elif (proto == PROTO_ICMP and version == 4) or (proto == PROTO_ICMPV6 and version == 6):
            reply = echo_reply(version, src, dst, packet[l4:end], self.config.vnet_hdr)
            if isinstance(reply, str):
                self.count(reply)
            else:
                self.count("icmp_echo_replied")
                self.out.append(reply)
        else:
            self.count("ip_unknown_protocol")

    def _new_syn(self, packet: bytes, l3: int, l4: int, end: int, cflags: int, now: float) -> None:
        key = self.ffi.buffer(self._key, self._keylen[0])[:]
        if key in self.by_key:
            self.count("tcp_syn_retransmitted")
            return
        lib = self.lib
        unannounced = len(self.by_key) if self.config.eager else 0  # lazy ones are in self.tcp already
        if len(self.tcp) + unannounced + len(self.udp) >= self.config.max_flows:
            self.count("tcp_max_flows")
            lib.tr_refuse(packet, l3, l4, now)
            return
        src, sport, dst, dport = _split_key(key)
        victims = self.half_open.admit(src, now)  # no SYN cookies here (see tunray.halfopen)
        if victims is None:
            self.count(DROPPED)  # its source's share is full: no state, no answer (it retransmits)
            return
        for victim in victims:
            assert isinstance(victim, _Tcp)
            self.count(EVICTED)
            self._end_handshake(victim, now, quiet=True)
        self.count("tcp_connections")
        if self.config.eager:
            # lwIP answers now; the flow is announced once the handshake completes, but
            # counts against maxFlows and handshakeTimeout from here
            t = _Tcp(self._new_handle(), key, ACCEPTING)
            t.held = False
            self.by_key[key] = t
            self.half_open.add(t, src, now)
            self._arm_handshake(t, now)
            if not self._inject(t, packet, l3, l4, end, cflags, dport, now):
                self._settled(t)
            return
        t = _Tcp(self._new_handle(), key, PENDING)
        t.syn, t.l3, t.l4, t.end, t.cflags = packet, l3, l4, end, cflags
        self.tcp[t.handle] = t
        self.by_key[key] = t
        self.half_open.add(t, src, now)
        self._arm_handshake(t, now)
        self.events.append(TcpOpened(t.handle, src, sport, dst, dport, True))

    def _settled(self, t: _Tcp) -> None:
        """*t* is no longer half-open (its handshake completed or ended)."""
        if self.by_key.get(t.key) is t:
            del self.by_key[t.key]
        self.half_open.remove(t)

    def _arm_handshake(self, t: _Tcp, now: float) -> None:
        t.deadline = now + self.config.handshake_timeout
        heapq.heappush(self._hs_timers, (t.deadline, t.handle, t))

    def _inject(self, t: _Tcp, syn: bytes, l3: int, l4: int, end: int, cflags: int, dport: int, now: float) -> bool:
        lib = self.lib
        if lib.tr_listen(dport) != 0:
            self.count("tcp_listen_failed")
            lib.tr_refuse(syn, l3, l4, now)
            return False
        r = lib.tr_input(syn, l3, l4, end, cflags | 1, now, self._key, self._keylen)
        if r == 2:
            self._collect()
        return bool(r >= 0)

    def _sync_budget(self) -> None:
        """Charge the buffer budget with what the glue holds now (received, unread bytes)."""
        budget = self.budget
        if budget is not None:
            held = self._glue.rx_bytes
            if held != self._rx_charged:
                budget.charge(held - self._rx_charged)
                self._rx_charged = held

    def _collect(self) -> None:
        """Turn the glue's pending events into stackcore events (call after every C call)."""
        lib = self.lib
        evs = lib.tr_events(self._n)
        append = self.events.append
        for i in range(self._n[0]):
            ev = evs[i]
            kind = ev.kind
            c = ev.conn
            if kind == 2:
                append(TcpReadable(c.handle))
            elif kind == 3:
                append(TcpWritable(c.handle))
            elif kind == 1:
                self._accepted(c)
            elif kind == 4:
                append(TcpPeerEof(c.handle))
            elif kind == 5 or kind == 6:
                t = self.tcp.get(c.handle)
                if t is not None:
                    t.ended = True
                append(TcpClosed(c.handle) if kind == 5 else TcpReset(c.handle))

    def _accepted(self, c: Any) -> None:
        key = self.ffi.buffer(c.key, c.keylen)[:]
        t = self.by_key.get(key)
        if t is not None:
            self._settled(t)  # the handshake is complete
        now = self.now
        lib = self.lib
        if t is None:  # its handshake timed out meanwhile
            lib.tr_release(c, 1, now)
            return
        if self.config.eager and t.state == ACCEPTING and not t.held and t.handle not in self.tcp:
            t.state = OPEN
            t.held = True
            self.tcp[t.handle] = t
            c.handle = t.handle
            t.conn = c
            src, sport, dst, dport = _split_key(key)
            self.events.append(TcpOpened(t.handle, src, sport, dst, dport, False))
            return
        t.state = OPEN
        t.conn = c
        c.handle = t.handle
        for chunk in t.early:
            lib.tr_write(c, chunk, len(chunk), now)
        t.early = []
        if t.shut:
            lib.tr_shutdown(c, now)
        if not t.held:
            t.conn = None
            lib.tr_release(c, 0, now)
            return
        if t.want_read:
            self.events.append(TcpReadable(t.handle))
        if t.want_write and lib.tr_writable(c):
            self.events.append(TcpWritable(t.handle))

    def drain(self, now: float) -> list[bytes]:
        self.now = now
        lib = self.lib
        budget = self.budget
        if budget is not None:
            self._sync_budget()
            budget.take_waiters()  # a segment dropped for room comes back with the app's retransmission
        buf = lib.tr_output(self._recs, self._n)
        n = self._n[0]
        out: list[bytes] = []
        if self.out:
            out.extend(self.out)
            self.out.clear()
        if n:
            recs = self._recs[0]
            last = 2 * (n - 1)
            whole = self.ffi.buffer(buf, recs[last] + recs[last + 1])
            out.extend([whole[recs[2 * i]:recs[2 * i] + recs[2 * i + 1]] for i in range(n)])
        return out

    def take_events(self) -> list[CoreEvent]:
        evs = self.events
        if not evs:
            return []
        taken = evs[:]
        evs.clear()
        return taken

    # --- timers -----------------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        best = self.udp.next_timer()
        if self.lib.tr_tcp_busy():
            ms = self.lib.tr_sleeptime()
            if ms != 0xFFFFFFFF:
                t = self.now + ms / 1000.0
                best = t if best is None or t < best else best
        timers = self._hs_timers
        while timers and (timers[0][2].state == OPEN or timers[0][0] != timers[0][2].deadline):
            heapq.heappop(timers)
        if timers and (best is None or timers[0][0] < best):
            best = timers[0][0]
        return best

    def handle_timer(self, now: float) -> None:
        self.now = now
        lib = self.lib
        lib.tr_timers(now, self._tw_ticks)
        self._collect()
        timers = self._hs_timers
        while timers and timers[0][0] <= now:
            d, _h, t = heapq.heappop(timers)
            if d != t.deadline or t.state == OPEN or self.by_key.get(t.key) is not t:
                continue
            self.count("tcp_handshake_timeout")
            self._end_handshake(t, now)
        self.udp.handle_timer(now)

    def _end_handshake(self, t: _Tcp, now: float, quiet: bool = False) -> None:
        """End a connection that never reached OPEN and report it: RST, or nothing if *quiet*
        (an evicted handshake: a held SYN is forgotten, lwIP's SYN_RCVD pcb abandoned)."""
        self._settled(t)
        if t.state == PENDING and t.syn is not None:
            if not quiet:
                self.lib.tr_refuse(t.syn, t.l3, t.l4, now)
        else:
            self.lib.tr_abort_key(t.key, len(t.key), int(not quiet), now)
        t.syn = None
        if t.held and not t.ended:
            t.ended = True
            self.events.append(TcpReset(t.handle))

    def reset_all(self, now: float) -> None:
        self.now = now
        for t in list(self.by_key.values()):
            self._end_handshake(t, now)
        self.lib.tr_reset_all(now)
        self._collect()
        self.udp.reset_all()
        self.finished = True

    def stats(self) -> dict[str, int]:
        counts = self.ffi.new("size_t[5]")
        self.lib.tr_counts(counts)
        glue = self.lib.tr_stats_ptr()
        out = {"tcp_open": len(self.tcp), "tcp_half_open": len(self.by_key), "udp_open": len(self.udp),
               "lwip_rx_bytes": glue.rx_bytes}
        if self.budget is not None:
            out.update(self.budget.stats())
        return out | {"lwip_active_pcbs": counts[0],
                "lwip_time_wait_pcbs": counts[1], "lwip_listen_pcbs": counts[2], "lwip_conns": counts[4],
                # process-wide totals of the glue
                "segments_in": glue.segs_in, "packets_out": glue.pkts_out, "gso_merged": glue.gso_merged,
                "mss_rewritten": glue.mss_rewritten, "segments_clipped": glue.segs_clipped}

    # --- TCP by handle ----------------------------------------------------------------------------

    def tcp_accept(self, handle: int, now: float) -> None:
        t = self.tcp[handle]
        if t.state != PENDING or t.ended or t.syn is None:
            return
        self.now = now
        syn, t.syn = t.syn, None
        t.state = ACCEPTING
        self._arm_handshake(t, now)
        if not self._inject(t, syn, t.l3, t.l4, t.end, t.cflags, _split_key(t.key)[3], now):
            self._settled(t)
            t.ended = True
            self.events.append(TcpReset(handle))

    def tcp_read(self, handle: int, max_bytes: int, now: float) -> bytes | None:
        t = self.tcp[handle]
        c = t.conn
        if c is None:
            if t.ended:
                return b""
            t.want_read = True
            return None
        self.now = now
        n = self.lib.tr_read(c, self._scratch, min(max_bytes, SCRATCH), now)
        if n:
            data: bytes = self._scratch_buf[0:n]
            self._sync_budget()
            return data
        if c.fin_in or c.closed or t.ended:
            return b""
        c.want_read = 1
        return None

    def tcp_write(self, handle: int, data: bytes | bytearray | memoryview, now: float) -> bool:
        t = self.tcp[handle]
        if t.ended or t.shut:
            raise SendClosed("the connection is closed")
        c = t.conn
        if c is None:
            chunk = bytes(data)
            t.early.append(chunk)
            t.early_len += len(chunk)
            below = t.early_len < self.config.send_high_water
            t.want_write = not below
            return below
        self.now = now
        buf = data if isinstance(data, bytes) else self.ffi.from_buffer(data)
        r = self.lib.tr_write(c, buf, len(data), now)
        if r < 0:
            raise SendClosed("the connection is closed")
        return bool(r)

    def tcp_writable(self, handle: int) -> bool:
        t = self.tcp[handle]
        c = t.conn
        if t.ended:
            return True
        if c is None:
            below = t.early_len < self.config.send_high_water
            t.want_write = not below
            return below
        return bool(self.lib.tr_writable(c))

    def tcp_shutdown(self, handle: int, now: float) -> None:
        t = self.tcp[handle]
        if t.shut or t.ended:
            return
        t.shut = True
        if t.conn is not None:
            self.now = now
            self.lib.tr_shutdown(t.conn, now)
            self._collect()

    def tcp_close(self, handle: int, now: float) -> None:
        self._release(handle, False, now)

    def tcp_abort(self, handle: int, now: float) -> None:
        self._release(handle, True, now)

    def _release(self, handle: int, abort: bool, now: float) -> None:
        t = self.tcp.pop(handle)
        t.held = False
        self.now = now
        c = t.conn
        if c is not None:
            t.conn = None
            self.lib.tr_release(c, int(abort), now)
            self._collect()
        elif self.by_key.get(t.key) is t and (abort or t.state == PENDING):
            self._end_handshake(t, now)
        # an ACCEPTING close is finished by _accepted: the writes, then FIN

    # --- UDP by handle ----------------------------------------------------------------------------

    def udp_recv(self, handle: int) -> tuple[bytes, bytes, int] | None:
        return self.udp.recv(handle)

    def udp_send(self, handle: int, data: bytes, src_ip: bytes, src_port: int, now: float) -> bool:
        self.now = now
        return self.udp.send(handle, data, src_ip, src_port, now)

    def udp_close(self, handle: int, now: float) -> None:
        self.now = now
        self.udp.close(handle)
