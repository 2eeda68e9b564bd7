"""One TCP connection: the state machine, handshake, receive path, timers and driver operations.

Theory of operation.

* :class:`TcpConn` is the only concrete class: its fields are in
  :class:`~tunray_stack_python.tcp_base.TcpBase`, the send half in
  :class:`~tunray_stack_python.tcp_sender.TcpSender`.  Every state change goes through
  :meth:`TcpConn.go` and the :data:`~tunray_stack_python.tcp_state.TRANSITIONS` table;
  reaching ``CLOSED`` hands the connection to :meth:`~tunray_stack_python.core.Core.release`.
* Receive side: ``rcvbuf`` holds in-order bytes not yet read; ``ooo`` holds out-of-order
  segments ``(offset, bytes)``, all inside the advertised window.  The window is
  ``limit - len(rcvbuf)``, so memory is bounded by ``limit`` and the right edge
  ``read_total + limit`` never moves left.  After :meth:`TcpConn.close_read` data is
  counted and dropped, never buffered.
* In-order data is batched: it sets ``ack_pending`` and :meth:`~TcpSender.output` (at the
  end of the core's batch) sends one ACK; duplicate ACKs (out-of-order data) set
  ``ack_now`` and go out at once so the peer's fast retransmit works.
* Driver events (:mod:`tunray.stackcore`) name the connection's ``handle``.  Readiness is
  edge-triggered: ``TcpReadable`` / ``TcpWritable`` only when the core set ``want_read`` /
  ``want_write`` for a driver told to wait; the flag is cleared as the event is queued.
  ``TcpPeerEof`` goes out once, while the driver holds the handle.
"""

from __future__ import annotations

from tunray.stackcore import TcpPeerEof, TcpReadable, TcpWritable

from tunray_stack_python.reassembly import OutOfOrder
from tunray_stack_python.tcp_base import FIN_ACK_DELAY, INF
from tunray_stack_python.tcp_sender import TcpSender
from tunray_stack_python.tcp_state import FIN_QUEUED, RECEIVING, TRANSITIONS, Input, State
from tunray_stack_python.tcp_wire import ACK, FIN, M32, RST, SYN, seq_delta, syn_options


class TcpConn(TcpSender):
    """A connection; the driver uses it through :class:`~tunray_stack_python.core.Core` methods."""

    __slots__ = ()

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
        # (a segment without ACK never gets here: the core drops it, tunray.net.packet.BAD_TCP_FLAGS)
        if ts is not None and self.ts_ok and off <= self.rcv_nxt:
            self.ts_recent = ts[0]
        if state is State.SYN_RCVD:
            if ack != self.iss1:
                core.count("tcp_bad_ack_of_syn")
                core.send_rst(self.version, self.local_ip, self.remote_ip, self.local_port, self.remote_port,
                              ack, 0, False)
                return
            self.go(Input.ACK_OF_SYN)
            core.handshake_done(self)
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
        right = self.adv_right  # never more than we advertised
        budget = self.core.budget
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
                if budget is not None and end > rcv_nxt and not self.read_closed and end - rcv_nxt > budget.room():
                    end = rcv_nxt + budget.room()  # the rest is not acknowledged: the app sends it again
                    budget.denied(self)
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
                        self.core.events.append(TcpReadable(self.handle))
                else:
                    self.ack_now = True  # zero window probe
        if fin:
            self.peer_fin_off = off + n
        if budget is not None:
            self.recharge()
        if self.peer_fin_off >= 0 and not self.fin_rcvd and self.rcv_nxt == self.peer_fin_off:
            self.fin_rcvd = True
            pending = self.ack_now or self.ack_pending
            self.go(Input.PEER_FIN)
            if self.state is State.CLOSE_WAIT and not pending:
                # A passive close, as Linux does it (delayed ACK once in CLOSE_WAIT): the app's
                # FIN is ACKed by our own FIN if the outbound closes within FIN_ACK_DELAY.
                self.delack = self.core.now + FIN_ACK_DELAY
            else:
                self.ack_now = True
            if self.held:
                self.want_read = False
                self.core.events.append(TcpPeerEof(self.handle))

    def _store_ooo(self, off: int, payload: memoryview, right: int) -> None:
        end = min(off + len(payload), right)
        ooo = self.ooo
        if ooo is None:
            ooo = self.ooo = OutOfOrder()
        if end <= off or ooo.size + (end - off) > self.limit:
            self.core.count("tcp_ooo_dropped")
            return
        budget = self.core.budget
        if budget is not None and end - off > budget.room():
            budget.denied(self)
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

    def _writable(self) -> None:
        self.core.events.append(TcpWritable(self.handle))

    # --- timers ---------------------------------------------------------------------------------

    def deadline(self) -> float:
        state = self.state
        if state is State.TIME_WAIT or state is State.FIN_WAIT_2:
            return min(self.timer_deadline, self.rto_deadline)
        idle = self.last_active + self.core.config.tcp_idle_timeout
        d = min(self.rto_deadline, idle, self.handshake_deadline, self.delack)
        if (
            self.snd_wnd == 0
            and self.snd_una + len(self.sndbuf) > self.snd_nxt
            and d > self.core.now + self.rto
            and state is not State.SYN_PENDING
            and state is not State.SYN_RCVD
        ):
            # Persist: probe a zero window.  Not before the handshake is done: until the
            # peer ACKs our SYN the window is unknown, and data must not precede the SYN-ACK.
            d = self.core.now + self.rto
        return d

    def on_timer(self, now: float) -> None:
        core = self.core
        state = self.state
        if now >= self.delack:
            self.delack = INF
            self.ack_now = True  # the core drains this connection after its timer
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
        self._on_send_timer(now)

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
        self.recharge()
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
        self.recharge()

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
