"""The send half of a TCP connection: transmission, ACK processing, congestion control, timers.

Theory of operation.

* ``sndbuf`` holds bytes from ``snd_una`` on (unacked, then unsent).  ``snd_nxt`` is the
  next byte to send, ``snd_max`` the highest byte ever sent.  Our FIN sits after the last
  byte; ``fin_rtx`` marks it as due again.
* ACK-clocked sends are batched: the core calls :meth:`TcpSender.output` once per dirty
  connection at the end of a batch, which sends what the windows allow and one ACK.
* Congestion control is NewReno (RFC 5681 slow start / congestion avoidance, limited
  transmit).  Loss recovery lives in :mod:`~tunray_stack_python.recovery`: a SACK
  scoreboard, RFC 6675 hole retransmission paced by PRR (RFC 6937), detection of lost
  retransmissions, NewReno partial ACKs (RFC 6582) without SACK; cwnd goes to ssthresh
  once per episode and back on exit.  No go-back-N: after a timeout every unSACKed byte
  is lost and goes out again under a slow-starting cwnd, SACKed data never does.
  ``rec`` is allocated on the first sign of loss and dropped once the episode ends with
  an empty scoreboard.
* Timers: a tail loss probe (RFC 8985: ~2 SRTT) goes before the RTO (RFC 6298, min
  200 ms, backoff forgotten on the first ACK of new data); RTT from timestamps (RFC 7323)
  when offered, else one timed segment (Karn).  While data or our FIN is outstanding,
  ``rto_deadline`` is armed (``probe`` says whether it is the probe or the RTO).
* The few lifecycle operations the sender needs (state transitions, abort, SYN-ACK
  retransmission, waking the writer) belong to :class:`~tunray_stack_python.tcp.TcpConn`;
  the stubs below name them.
"""

from __future__ import annotations

from tunray_stack_python.recovery import Recovery
from tunray_stack_python.tcp_base import INF, TcpBase
from tunray_stack_python.tcp_state import FIN_QUEUED, Input, State
from tunray_stack_python.tcp_wire import M32, seq_delta

MIN_RTO = 0.2
MAX_RTO = 60.0
MAX_RETRIES = 12
MIN_PTO = 0.01  # tail loss probe floor
DELACK = 0.04  # the peer may delay the ACK of a lone segment this long (Linux's minimum)


class TcpSender(TcpBase):
    """The send half; adds methods only (see :class:`~tunray_stack_python.tcp_base.TcpBase`)."""

    __slots__ = ()

    # --- provided by TcpConn ---------------------------------------------------------------------

    def go(self, what: Input) -> bool:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def send_syn_ack(self, now: float) -> None:
        raise NotImplementedError

    def _writable(self) -> None:
        """Tell the driver the send buffer fell below its high-water mark."""
        raise NotImplementedError

    # --- ACK processing ----------------------------------------------------------------------------

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
            self._writable()

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

    def _on_send_timer(self, now: float) -> None:
        """The RTO, a tail loss probe or a zero-window probe, whichever is due."""
        core = self.core
        state = self.state
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
        elif (
            self.snd_wnd == 0
            and self.snd_una + len(self.sndbuf) > self.snd_nxt
            and self.snd_nxt == self.snd_max
            and state is not State.SYN_PENDING
            and state is not State.SYN_RCVD
        ):
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
