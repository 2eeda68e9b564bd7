"""One TCP connection: receive reassembly, send buffer, retransmission, congestion control.

Theory of operation.

* Sequence numbers are kept as unbounded *data offsets*: our byte ``k`` is wire sequence
  ``iss + 1 + k``, the peer's byte ``k`` is ``irs + 1 + k``.  Wire values are converted
  relative to the nearest known offset (:func:`seq_delta`), so wraparound never matters.
* Send side: ``sndbuf`` holds bytes from ``snd_una`` on (unacked, then unsent).
  ``snd_nxt`` is the next byte to send (pulled back to ``snd_una`` by an RTO: go-back-N),
  ``snd_max`` the highest byte ever sent.  Our FIN sits after the last byte.
* Receive side: ``rcvbuf`` holds in-order bytes not yet read; ``ooo`` holds out-of-order
  segments ``(offset, bytes)``, all inside the advertised window.  The window is
  ``limit - len(rcvbuf)``, so memory is bounded by ``limit`` and the right edge
  ``read_total + limit`` never moves left.
* In-order data and ACK-clocked sends are batched: :meth:`flush` (called by the core at
  the end of a batch) sends new data and one ACK; duplicate ACKs (out-of-order data)
  go out at once so the peer's fast retransmit works.
* Congestion control is NewReno (RFC 5681 slow start / congestion avoidance, limited
  transmit).  Loss recovery lives in :mod:`~tunray_stack_python.recovery`: a SACK
  scoreboard, RFC 6675 hole retransmission paced by PRR (RFC 6937), detection of lost
  retransmissions, NewReno partial ACKs (RFC 6582) without SACK; cwnd goes to ssthresh
  once per episode and back on exit.  No go-back-N: after a timeout every unSACKed byte
  is lost and goes out again under a slow-starting cwnd, SACKed data never does.
* Timers: a tail loss probe (RFC 8985: ~2 SRTT) goes before the RTO (RFC 6298, min
  200 ms, backoff forgotten on the first ACK of new data); RTT from timestamps (RFC 7323)
  when offered, else one timed segment (Karn).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from tunray_stack_python import events
from tunray_stack_python.checksum import finish, partial, pseudo_sum, sum_of
from tunray_stack_python.ip import (
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    PROTO_TCP,
    VNET_F_NEEDS_CSUM,
    v4_base_sum,
    v4_header,
    v6_header,
    vnet_header,
)
from tunray_stack_python.reassembly import OutOfOrder
from tunray_stack_python.recovery import Recovery
from tunray_stack_python.tcp_state import FIN_QUEUED, RECEIVING, TRANSITIONS, Input, State
from tunray_stack_python.tcp_wire import (
    ACK,
    FIN,
    HEADER,
    M32,
    PSH,
    RST,
    SYN,
    TS_PREFIX,
    sack_option,
    seq_delta,
    syn_options,
)

if TYPE_CHECKING:
    from tunray_stack_python.core import Core

_II = struct.Struct("!II")
MIN_RTO = 0.2
MAX_RTO = 60.0
MAX_RETRIES = 12
MIN_PTO = 0.01  # tail loss probe floor
DELACK = 0.04  # the peer may delay the ACK of a lone segment this long (Linux's minimum)
INF = float("inf")


class TcpConn:
    """A connection; the driver uses it through :class:`~tunray_stack_python.core.Core` methods."""

    __slots__ = (
        "ack_now", "ack_pending", "adv_right", "closed_reset", "core", "cwnd", "dupacks", "fin_acked", "fin_rcvd",
        "fin_rtx", "fin_sent", "fin_wanted", "gso_max", "handshake_deadline", "ip_base", "irs1", "iss", "iss1", "key",
        "last_active", "limit", "local_ip", "local_port", "mss", "ooo", "peer_fin_off", "peer_wscale", "probe",
        "pseudo", "rcv_nxt", "rcv_wscale", "rcvbuf", "read_closed", "read_total", "rec", "remote_ip", "remote_port",
        "retries", "rto", "rto_deadline", "rtt_off", "rtt_time", "rttvar", "sack_ok", "scheduled", "snd_max",
        "snd_nxt", "snd_una", "snd_wnd", "sndbuf", "srtt", "ssthresh", "state", "timer_deadline", "ts_ok",
        "ts_recent", "user", "version", "want_read", "want_write", "wl1",
    )

    def __init__(self, core: Core, key: tuple[bytes, int, bytes, int], version: int, iss: int) -> None:
        cfg = core.config
        self.core = core
        self.key = key
        self.version = version
        self.remote_ip, self.remote_port, self.local_ip, self.local_port = key
        self.state = State.SYN_PENDING
        self.iss = iss
        self.iss1 = (iss + 1) & M32
        self.irs1 = 0
        self.user: object = None  # the driver's link
        self.want_read = False
        self.want_write = False
        self.scheduled = INF
        self.closed_reset = False
        # Addressing and checksum bases for segments we send.
        self.pseudo = pseudo_sum(self.local_ip, self.remote_ip, PROTO_TCP, 0)
        self.ip_base = v4_base_sum(self.local_ip, self.remote_ip, PROTO_TCP) if version == 4 else 0
        hdr = 40 if version == 4 else 60
        self.mss = max(cfg.mtu - hdr, 536)  # what we send per segment, refined by the peer's MSS
        self.gso_max = 0
        # Send side.
        self.sndbuf = bytearray()
        self.snd_una = self.snd_nxt = self.snd_max = 0
        self.snd_wnd = 0
        self.wl1 = 0
        self.fin_wanted = self.fin_sent = self.fin_acked = self.fin_rtx = False
        self.cwnd = 0
        self.ssthresh = 1 << 30
        self.dupacks = 0
        self.rec: Recovery | None = None  # loss recovery state, allocated on the first sign of loss
        self.probe = False  # the armed timer is a tail loss probe, not the RTO
        self.srtt = 0.0
        self.rttvar = 0.0
        self.rto = 1.0
        self.rto_deadline = INF
        self.retries = 0
        self.rtt_off = -1
        self.rtt_time = 0.0
        # Receive side.
        self.limit = cfg.tcp_buffer
        self.rcvbuf = bytearray()
        self.rcv_nxt = 0
        self.read_total = 0
        self.adv_right = 0
        self.ooo: OutOfOrder | None = None  # allocated by the first out-of-order segment
        self.peer_fin_off = -1
        self.fin_rcvd = False
        self.read_closed = False
        self.rcv_wscale = 0
        self.peer_wscale = 0
        self.sack_ok = False
        self.ts_ok = False
        self.ts_recent = 0
        self.ack_pending = False
        self.ack_now = False
        self.last_active = 0.0
        self.handshake_deadline = INF
        self.timer_deadline = INF

    # --- the state machine ----------------------------------------------------------------

    def go(self, what: Input) -> bool:
        nxt = TRANSITIONS.get((self.state, what))
        if nxt is None:
            self.core.count(f"tcp_unexpected_{what.value}_in_{self.state.value}")
            return False
        self.state = nxt
        if nxt is State.CLOSED:
            self.core.release(self)
        elif nxt is State.TIME_WAIT:
            self.timer_deadline = self.core.now + self.core.config.time_wait
        elif nxt is State.FIN_WAIT_2:
            self.timer_deadline = self.core.now + self.core.config.fin_timeout
        return True

    # --- handshake --------------------------------------------------------------------------

    def on_syn(self, seq: int, mss: int, wscale: int, sack_ok: bool, ts: tuple[int, int] | None,
               now: float) -> None:
        cfg = self.core.config
        self.irs1 = (seq + 1) & M32
        hdr = 40 if self.version == 4 else 60
        self.mss = max(min(mss or (536 if self.version == 4 else 1220), cfg.mtu - hdr), 64)
        if wscale >= 0:
            self.peer_wscale = wscale
            self.rcv_wscale = max(cfg.tcp_buffer.bit_length() - 16, 7)
        self.sack_ok = sack_ok
        if ts is not None:
            self.ts_ok = True
            self.ts_recent = ts[0]
        self.cwnd = max(cfg.initial_cwnd, 2 * self.mss)
        if cfg.gso:
            limit = 0xFFFF - (20 if self.version == 4 else 0) - 20 - (12 if ts else 0)
            seg = self.mss - (12 if ts else 0)
            self.gso_max = limit - limit % seg
        self.last_active = now

    def accept(self, now: float) -> None:
        if self.state is not State.SYN_PENDING:
            return
        self.go(Input.ACCEPT)
        self.handshake_deadline = now + self.core.config.handshake_timeout
        self.send_syn_ack(now)
        self.rto_deadline = now + self.rto

    def send_syn_ack(self, now: float) -> None:
        ts = (self._tsval(now), self.ts_recent) if self.ts_ok else None
        opts = syn_options(self.core.config.mtu - (40 if self.version == 4 else 60),
                           self.rcv_wscale if self.peer_wscale or self.rcv_wscale else -1, self.sack_ok, ts)
        win = min(self.limit, 0xFFFF)
        self.adv_right = win
        self._emit(self.iss, SYN | ACK, self.irs1, win, opts, b"", 0)

    # --- incoming segments -----------------------------------------------------------------

    def on_segment(self, seq: int, ack: int, flags: int, win: int, ts: tuple[int, int] | None,
                   sack: list[tuple[int, int]] | None, payload: memoryview, now: float) -> None:
        state = self.state
        core = self.core
        self.last_active = now
        if state is State.SYN_PENDING:
            if flags & RST:
                self.closed_reset = True
                self.go(Input.RESET)
            return  # a retransmitted SYN waits for accept()
        off = self.rcv_nxt + seq_delta(seq, (self.irs1 + self.rcv_nxt) & M32)
        if flags & RST:
            if self.rcv_nxt <= off <= self.rcv_nxt + max(self._free(), 1):
                self.closed_reset = True
                self.go(Input.RESET)
            else:
                core.count("tcp_rst_out_of_window")
            return
        if flags & SYN:
            if state is State.SYN_RCVD and off == -1:
                self.send_syn_ack(now)
            else:
                self.ack_now = True
            return
        if not flags & ACK:
            core.count("tcp_no_ack_flag")
            return
        if ts is not None and self.ts_ok and off <= self.rcv_nxt:
            self.ts_recent = ts[0]
        if state is State.SYN_RCVD:
            if ack != self.iss1:
                core.count("tcp_bad_ack_of_syn")
                core.send_rst(self.version, self.local_ip, self.remote_ip, self.local_port, self.remote_port,
                              ack, 0, False)
                return
            self.go(Input.ACK_OF_SYN)
            self.handshake_deadline = INF
            self.rto_deadline = INF
            self.rto = 1.0
            self.retries = 0
            self.snd_wnd = win << self.peer_wscale
            self.wl1 = off
            if self.fin_wanted:
                self.go(Input.APP_CLOSE)
        self._on_ack(ack, win, off, ts, sack, bool(payload) or bool(flags & FIN), now)
        if self.state is State.CLOSED:
            return
        if payload or flags & FIN:
            self._on_data(off, payload, flags & FIN)

    def _on_data(self, off: int, payload: memoryview, fin: int) -> None:
        n = len(payload)
        rcv_nxt = self.rcv_nxt
        if self.state not in RECEIVING:
            if n or (fin and self.fin_rcvd):
                self.ack_now = True  # a retransmission after the peer's FIN; re-ACK it
                if self.state is State.TIME_WAIT:
                    self.timer_deadline = self.core.now + self.core.config.time_wait
            return
        right = self.read_total + self.limit
        if n:
            end = off + n
            if end <= rcv_nxt:
                self.ack_now = True
                self.core.count("tcp_duplicate_segment")
            elif off > rcv_nxt:
                self._store_ooo(off, payload, right)
                self.ack_now = True
            else:
                if end > right:
                    end = right
                if end > rcv_nxt:
                    if self.read_closed:
                        self.read_total += end - rcv_nxt
                    elif off == rcv_nxt and end - off == n:
                        self.rcvbuf += payload
                    else:
                        self.rcvbuf += payload[rcv_nxt - off:end - off]
                    self.rcv_nxt = rcv_nxt = end
                    if self.ooo:
                        self._pull_ooo()
                    self.ack_pending = True
                    if self.want_read:
                        self.want_read = False
                        self.core.events.append(events.TcpReadable(self))
                else:
                    self.ack_now = True  # zero window probe
        if fin:
            self.peer_fin_off = off + n
        if self.peer_fin_off >= 0 and not self.fin_rcvd and self.rcv_nxt == self.peer_fin_off:
            self.fin_rcvd = True
            self.ack_now = True
            self.go(Input.PEER_FIN)
            if self.want_read:
                self.want_read = False
                self.core.events.append(events.TcpReadable(self))

    def _store_ooo(self, off: int, payload: memoryview, right: int) -> None:
        end = min(off + len(payload), right)
        ooo = self.ooo
        if ooo is None:
            ooo = self.ooo = OutOfOrder()
        if end <= off or ooo.size + (end - off) > self.limit:
            self.core.count("tcp_ooo_dropped")
            return
        ooo.add(off, payload[:end - off])

    def _pull_ooo(self) -> None:
        ooo = self.ooo
        assert ooo is not None
        while (ready := ooo.pop_ready(self.rcv_nxt)) is not None:
            start, data = ready
            end = start + len(data)
            if end > self.rcv_nxt:
                if self.read_closed:
                    self.read_total += end - self.rcv_nxt
                elif start == self.rcv_nxt:
                    self.rcvbuf += data
                else:
                    self.rcvbuf += memoryview(data)[self.rcv_nxt - start:]
                self.rcv_nxt = end
        if not ooo:
            self.ooo = None

    def _on_ack(self, ack: int, win: int, seg_off: int, ts: tuple[int, int] | None,
                sack: list[tuple[int, int]] | None, carries: bool, now: float) -> None:
        una = self.snd_una
        acked = seq_delta(ack, (self.iss1 + una) & M32)
        if acked < 0:
            return  # an old ACK
        in_flight = self.snd_max - una
        if acked > in_flight + (1 if self.fin_sent else 0):
            self.core.count("tcp_ack_of_unsent")
            self.ack_now = True
            return
        self.retries = 0
        wnd = win << self.peer_wscale
        old_wnd = self.snd_wnd
        if seg_off >= self.wl1:
            self.wl1 = seg_off
            self.snd_wnd = wnd
        rec = self.rec
        sacked_before = 0
        if sack is not None and self.sack_ok:
            if rec is None:
                rec = self.rec = Recovery()
            sacked_before = rec.sacked
            base = (self.iss1 + una) & M32
            rec.add([(una + seq_delta(a, base), una + seq_delta(b, base)) for a, b in sack], una, self.snd_max)
        if acked == 0:
            if not in_flight or carries:
                return
            if sack is not None and self.sack_ok:
                assert rec is not None
                if rec.sacked == sacked_before:
                    return  # nothing new (a D-SACK, a reordered ACK)
            elif wnd != old_wnd:
                return  # a window update
            self.dupacks += 1
            if rec is None:
                rec = self.rec = Recovery()
            if rec.active:
                rec.delivered += rec.sacked - sacked_before if self.sack_ok else self._seg()
                rec.check_relost(self._seg())
            else:
                self._maybe_recover(rec, now)
            return
        # New data acknowledged.
        self.dupacks = 0
        data_acked = min(acked, in_flight)
        if data_acked:
            del self.sndbuf[:data_acked]
            self.snd_una = una = una + data_acked
            if self.snd_nxt < una:
                self.snd_nxt = una
        # RTT sample (timestamps, else one timed segment; Karn: none after a retransmission).
        if ts is not None and self.ts_ok and ts[1]:
            self._rtt_sample(((self._tsval(now) - ts[1]) & M32) / 1000.0)
        elif self.rtt_off >= 0 and una >= self.rtt_off:
            self._rtt_sample(now - self.rtt_time)
            self.rtt_off = -1
        grow = True
        if rec is not None:
            self.rto = self._base_rto()  # progress: forget the timeout backoff
            rec.advance(una)
            if rec.active:
                rec.delivered += data_acked + rec.sacked - sacked_before
                if una >= rec.recover:
                    if not rec.loss:
                        self.cwnd = self.ssthresh
                        grow = False
                    rec.end()
                else:
                    if not self.sack_ok:
                        rec.relost.append((una, min(una + self._seg(), self.snd_max)))  # NewReno partial ACK
                    rec.check_relost(self._seg())
                    grow = rec.loss
            elif rec.blocks:
                self._maybe_recover(rec, now)
                grow = not rec.active
            if not rec.active and not rec.blocks:
                self.rec = None
        if grow:
            if self.cwnd < self.ssthresh:
                self.cwnd += data_acked
            else:
                self.cwnd += max(self.mss * data_acked // self.cwnd, 1)
        if self.fin_sent and not self.fin_acked and acked == in_flight + 1:
            self.fin_acked = True
            self.fin_rtx = False
            self.go(Input.FIN_ACKED)
            if self.state is State.CLOSED:
                return
        self._arm_rto(now)
        if self.want_write and len(self.sndbuf) <= self.core.config.send_high_water:
            self.want_write = False
            self.core.events.append(events.TcpWritable(self))

    def _seg(self) -> int:
        """Payload bytes per full segment."""
        return self.mss - (12 if self.ts_ok else 0)

    def _tail(self) -> bool:
        """True if no new data could go out now (app- or receive-window-limited)."""
        snd_max = self.snd_max
        return snd_max >= self.snd_una + len(self.sndbuf) or snd_max >= self.snd_una + self.snd_wnd

    def _maybe_recover(self, rec: Recovery, now: float) -> None:
        """Enter fast recovery on three duplicate ACKs or once the scoreboard shows a loss."""
        una = self.snd_una
        seg = self._seg()
        if self.dupacks < 3 and rec.lost_edge(una, self.snd_max, seg, self._tail()) <= una:
            return
        flight = self.snd_max - una
        if flight <= 0:
            return
        self.core.count("tcp_fast_retransmit")
        self.ssthresh = max(flight // 2, 2 * seg)
        rec.begin(una, self.snd_max, False)
        if not self.sack_ok:
            rec.relost.append((una, min(una + seg, self.snd_max)))
        self.rtt_off = -1

    @property
    def in_recovery(self) -> bool:
        return self.rec is not None and self.rec.active

    def _arm_rto(self, now: float) -> None:
        """(Re)start the retransmission timer, as a tail loss probe (RFC 8985) when one may go first."""
        if self.snd_max > self.snd_una or self._fin_out():
            if self.srtt:
                pto = 2 * self.srtt + (DELACK if self.snd_max - self.snd_una <= self._seg() else 0.0)
                if pto < MIN_PTO:
                    pto = MIN_PTO
                if pto < self.rto:
                    self.rto_deadline = now + pto
                    self.probe = True
                    return
            self.rto_deadline = now + self.rto
        else:
            self.rto_deadline = INF
        self.probe = False

    def _retransmit(self, start: int, size: int, now: float) -> None:
        fin = self.fin_sent and start + size == self.snd_una + len(self.sndbuf) and self.state in FIN_QUEUED
        self._send_data(start, size, now, fin)
        if fin:
            self.fin_rtx = False
        self.rtt_off = -1

    def _fin_out(self) -> bool:
        return self.fin_sent and not self.fin_acked

    def _base_rto(self) -> float:
        if self.srtt == 0.0:
            return 1.0
        return min(max(self.srtt + max(0.001, 4 * self.rttvar), MIN_RTO), MAX_RTO)

    def _rtt_sample(self, rtt: float) -> None:
        if self.srtt == 0.0:
            self.srtt = rtt or 0.0005
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt or 0.0005
        self.rto = self._base_rto()

    # --- sending ------------------------------------------------------------------------------

    def _free(self) -> int:
        return self.limit - len(self.rcvbuf)

    def _tsval(self, now: float) -> int:
        return int(now * 1000) & M32

    def _window(self) -> int:
        free = self.limit - len(self.rcvbuf)
        if free < 0:
            free = 0
        win = free >> self.rcv_wscale
        if win > 0xFFFF:
            win = 0xFFFF
        right = self.rcv_nxt + (win << self.rcv_wscale)
        if right > self.adv_right:
            self.adv_right = right
        return win

    def _ack_wire(self) -> int:
        return (self.irs1 + self.rcv_nxt + (1 if self.fin_rcvd else 0)) & M32

    def _options(self, now: float) -> bytes:
        opts = TS_PREFIX + _II.pack(self._tsval(now), self.ts_recent) if self.ts_ok else b""
        ooo = self.ooo
        if ooo and self.sack_ok:
            base = self.irs1
            blocks = ooo.sack_blocks(3 if self.ts_ok else 4)
            opts += sack_option([((base + a) & M32, (base + b) & M32) for a, b in blocks])
        return opts

    def _emit(self, seq: int, flags: int, ack: int, win: int, opts: bytes,
              payload: bytes | memoryview, gso_size: int) -> None:
        core = self.core
        hlen = 20 + len(opts)
        l4len = hlen + len(payload)
        if core.config.vnet_hdr:
            head = HEADER.pack(self.local_port, self.remote_port, seq, ack, hlen << 2, flags, win,
                               partial(self.pseudo + l4len), 0) + opts
            iplen = 20 if self.version == 4 else 40
            vnet = vnet_header(VNET_F_NEEDS_CSUM,
                               (GSO_TCPV4 if self.version == 4 else GSO_TCPV6) if gso_size else GSO_NONE,
                               iplen + hlen, gso_size, iplen, 16)
        else:
            head = HEADER.pack(self.local_port, self.remote_port, seq, ack, hlen << 2, flags, win, 0, 0) + opts
            total = self.pseudo + l4len + sum_of(head) + (sum_of(payload) if payload else 0)
            head = HEADER.pack(self.local_port, self.remote_port, seq, ack, hlen << 2, flags, win,
                               finish(total), 0) + opts
            vnet = b""
        if self.version == 4:
            iph = v4_header(self.ip_base, self.local_ip, self.remote_ip, PROTO_TCP, 20 + l4len)
        else:
            iph = v6_header(self.local_ip, self.remote_ip, PROTO_TCP, l4len)
        core.out.append(b"".join((vnet, iph, head, payload)))

    def send_ack(self, now: float) -> None:
        self.ack_pending = self.ack_now = False
        self._emit((self.iss1 + self.snd_nxt + (1 if self.fin_sent and not self.fin_rtx else 0)) & M32, ACK, self._ack_wire(),
                   self._window(), self._options(now), b"", 0)

    def _send_data(self, off: int, size: int, now: float, fin: bool) -> None:
        seg = self.mss - (12 if self.ts_ok else 0)
        flags = ACK | (PSH | FIN if fin else 0)
        if size:
            view = memoryview(self.sndbuf)[off - self.snd_una:off - self.snd_una + size]
        else:
            view = memoryview(b"")
        self._emit((self.iss1 + off) & M32, flags, self._ack_wire(), self._window(), self._options(now),
                   view, seg if size > seg else 0)
        view.release()
        self.ack_pending = self.ack_now = False

    def output(self, now: float) -> None:
        """Send what the windows allow, then a pending ACK if no segment carried it."""
        state = self.state
        if state is State.SYN_PENDING or state is State.SYN_RCVD or state is State.CLOSED:
            return
        rec = self.rec
        if rec is not None and rec.active:
            self._recovery_output(rec, now)
        else:
            cwnd = self.cwnd
            if self.dupacks:  # limited transmit (RFC 3042): new data for the first two duplicate ACKs
                cwnd += min(self.dupacks, 2) * self._seg()
            self._send_new(now, self.snd_una + min(self.snd_wnd, cwnd))
        if self.ack_pending or self.ack_now:
            self.send_ack(now)

    def _send_new(self, now: float, limit: int) -> int:
        """Send new data up to offset *limit* (and our FIN after it); return the data bytes sent."""
        seg = self.mss - (12 if self.ts_ok else 0)
        burst = self.gso_max or seg
        total = self.snd_una + len(self.sndbuf)
        want_fin = self.fin_wanted and (not self.fin_sent or self.fin_rtx) and self.state in FIN_QUEUED
        first = self.snd_nxt
        if limit > total:
            limit = total
        while True:
            can = limit - self.snd_nxt
            if can <= 0:
                break
            size = min(can, burst)
            if size > seg and size % seg and size < can:
                size -= size % seg  # whole segments inside a GSO burst
            off = self.snd_nxt
            self.snd_nxt = off + size
            fin = want_fin and self.snd_nxt == total
            if self.snd_nxt > self.snd_max:
                if self.rtt_off < 0 and not self.ts_ok and self.snd_max == off:
                    self.rtt_off, self.rtt_time = self.snd_nxt, now
                self.snd_max = self.snd_nxt
            self._send_data(off, size, now, fin)
            if fin:
                self.fin_sent = True
                self.fin_rtx = want_fin = False
            if self.rto_deadline == INF:
                self._arm_rto(now)
        if want_fin and self.snd_nxt == total:
            self._send_data(total, 0, now, True)
            self.fin_sent = True
            self.fin_rtx = False
            if self.rto_deadline == INF:
                self._arm_rto(now)
        return self.snd_nxt - first

    def _recovery_output(self, rec: Recovery, now: float) -> None:
        """RFC 6675 NextSeg order (lost again, lost holes, new data, one rescue), PRR-paced."""
        seg = self._seg()
        una = self.snd_una
        tail = self._tail()
        edge = rec.lost_edge(una, self.snd_max, seg, tail)
        pipe = rec.pipe(una, self.snd_max, edge)
        if rec.loss:
            budget = self.cwnd - pipe
        elif pipe > self.ssthresh:
            budget = -(-rec.delivered * self.ssthresh // rec.fs) - rec.out
        else:
            budget = min(self.ssthresh - pipe, max(rec.delivered - rec.out, 0) + seg)
        if rec.force:
            rec.force = False
            if budget < 1:
                budget = 1
        count = self.core.count
        while budget > 0:
            hole = None
            relost = rec.relost
            while relost:
                a, b = relost[0]
                hole = rec.next_hole(max(a, una), b)
                if hole is None:
                    relost.pop(0)
                    continue
                if hole[1] - hole[0] > seg:
                    hole = (hole[0], hole[0] + seg)
                if hole[1] >= b:
                    relost.pop(0)
                else:
                    relost[0] = (hole[1], b)
                break
            if hole is None:
                hole = rec.next_hole(max(rec.high_rxt, una), edge)
                if hole is not None:
                    if hole[1] - hole[0] > seg:
                        hole = (hole[0], hole[0] + seg)
                    rec.high_rxt = hole[1]
            if hole is None and not tail:
                sent = self._send_new(now, min(self.snd_max + -(-budget // seg) * seg, una + self.snd_wnd))
                if sent:
                    budget -= sent
                    rec.out += sent
                    continue
            if hole is None:
                break
            size = hole[1] - hole[0]
            self._retransmit(hole[0], size, now)
            rec.rtx.append((hole[0], hole[1], self.snd_max))
            count("tcp_sack_retransmit" if self.sack_ok else "tcp_partial_ack_retransmit")
            if hole[0] == una and not rec.loss:
                self._arm_rto(now)  # the head went out again: restart the clock
            budget -= size
            rec.out += size
        if tail and self.fin_wanted and (not self.fin_sent or self.fin_rtx):
            self._send_new(now, self.snd_max)

    # --- timers ---------------------------------------------------------------------------------

    def deadline(self) -> float:
        state = self.state
        if state is State.TIME_WAIT or state is State.FIN_WAIT_2:
            return min(self.timer_deadline, self.rto_deadline)
        idle = self.last_active + self.core.config.tcp_idle_timeout
        d = min(self.rto_deadline, idle, self.handshake_deadline)
        if self.snd_wnd == 0 and self.snd_una + len(self.sndbuf) > self.snd_nxt and d > self.core.now + self.rto:
            d = self.core.now + self.rto  # persist: probe a zero window
        return d

    def on_timer(self, now: float) -> None:
        core = self.core
        state = self.state
        if state is State.TIME_WAIT or state is State.FIN_WAIT_2:
            if now >= self.timer_deadline:
                if state is State.FIN_WAIT_2:
                    core.count("tcp_fin_wait_2_timeout")
                self.go(Input.TIMEOUT)
                return
        if now >= self.handshake_deadline or (now >= self.last_active + core.config.tcp_idle_timeout
                                              and state is not State.TIME_WAIT):
            core.count("tcp_handshake_timeout" if state is State.SYN_RCVD else "tcp_idle_timeout")
            self.abort()
            return
        if now >= self.rto_deadline:
            if self.probe:
                self._send_probe(now)
                return
            self.retries += 1
            if self.retries > MAX_RETRIES:
                core.count("tcp_retransmit_give_up")
                self.abort()
                return
            self.rto = min(self.rto * 2, MAX_RTO)
            self.rto_deadline = now + self.rto
            if state is State.SYN_RCVD:
                self.send_syn_ack(now)
                return
            in_flight = self.snd_max - self.snd_una
            if in_flight or self._fin_out():
                core.count("tcp_rto")
                rec = self.rec
                if rec is None:
                    rec = self.rec = Recovery()
                if not (rec.active and rec.loss):  # the first timeout of this episode
                    self.ssthresh = max(in_flight // 2, 2 * self._seg())
                self.cwnd = self._seg()
                rec.begin(self.snd_una, self.snd_max, True)
                self.dupacks = 0
                self.fin_rtx = self._fin_out()
                self.rtt_off = -1
                self.output(now)
            else:
                self.rto_deadline = INF
        elif self.snd_wnd == 0 and self.snd_una + len(self.sndbuf) > self.snd_nxt and self.snd_nxt == self.snd_max:
            # Zero-window probe: one byte beyond the window.
            core.count("tcp_window_probe")
            off = self.snd_nxt
            self.snd_nxt = self.snd_max = off + 1
            self._send_data(off, 1, now, False)
            self.rto_deadline = now + self.rto

    def _send_probe(self, now: float) -> None:
        """Tail loss probe (RFC 8985): new data if the windows allow, else the last segment again.

        In recovery with the tail already SACKed, the first hole instead: its retransmission
        was probably lost, and nothing sent after it could tell.
        """
        self.core.count("tcp_tail_loss_probe")
        self.probe = False
        una = self.snd_una
        seg = self._seg()
        rec = self.rec
        if not self._tail():
            self._send_new(now, self.snd_max + seg)
        elif rec is not None and rec.active and rec.blocks and rec.blocks[-1][1] >= self.snd_max:
            hole = rec.next_hole(una, self.snd_max)
            if hole is not None:
                size = min(hole[1] - hole[0], seg)
                self._retransmit(hole[0], size, now)
                rec.rtx.append((hole[0], hole[0] + size, self.snd_max))
        elif self.snd_max > una:
            start = max(una, self.snd_max - seg)
            self._retransmit(start, self.snd_max - start, now)
        elif self._fin_out():
            self._send_data(una, 0, now, True)
        self.rto_deadline = now + self.rto

    # --- driver operations ----------------------------------------------------------------------

    def read(self, max_bytes: int) -> bytes:
        buf = self.rcvbuf
        if max_bytes >= len(buf):
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:max_bytes])
            del buf[:max_bytes]
        self.read_total += len(data)
        if self.state in RECEIVING and self.read_total + self.limit - self.adv_right >= self._update_step():
            self.ack_pending = True  # window update
        return data

    def _update_step(self) -> int:
        return min(self.limit >> 2, 2 * self.mss) or 1

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sndbuf += data

    def shutdown(self) -> None:
        if self.fin_wanted or self.state in FIN_QUEUED:
            return
        self.fin_wanted = True
        if self.state is State.ESTABLISHED or self.state is State.CLOSE_WAIT:
            self.go(Input.APP_CLOSE)

    def close_read(self) -> None:
        self.read_closed = True
        self.read_total += len(self.rcvbuf)
        self.rcvbuf.clear()

    def abort(self) -> None:
        if self.state is State.CLOSED:
            return
        if self.state is State.SYN_PENDING:
            self.core.send_rst(self.version, self.local_ip, self.remote_ip, self.local_port, self.remote_port,
                               0, self.irs1, True)
        elif self.state is not State.TIME_WAIT:
            self.core.send_rst(self.version, self.local_ip, self.remote_ip, self.local_port, self.remote_port,
                               (self.iss1 + self.snd_nxt) & M32, self._ack_wire(), True)
        self.closed_reset = True
        self.go(Input.ABORT)

    @property
    def eof(self) -> bool:
        return self.fin_rcvd or self.state is State.CLOSED
