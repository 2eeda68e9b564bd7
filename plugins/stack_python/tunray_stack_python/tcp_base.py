"""The fields of one TCP connection and the segments it emits (headers, options, checksums).

Theory of operation.

* One connection is one slotted object: every field lives in :class:`TcpBase`'s
  ``__slots__``; :class:`~tunray_stack_python.tcp_sender.TcpSender` (the send half and its
  timers) and :class:`~tunray_stack_python.tcp.TcpConn` (handshake, receive half, driver
  operations) add methods only, so the split across modules costs nothing per segment.
* Sequence numbers are kept as unbounded *data offsets*: our byte ``k`` is wire sequence
  ``iss + 1 + k``, the peer's byte ``k`` is ``irs + 1 + k``.  Wire values are converted
  relative to the nearest known offset (:func:`~tunray_stack_python.tcp_wire.seq_delta`),
  so wraparound never matters.
* Every segment leaves through :meth:`TcpBase._emit` carrying the current ACK, window and
  options (timestamps, SACK blocks for out-of-order data we hold).  The window offered is
  ``limit - len(rcvbuf)`` (scaled, capped at 16 bits); ``adv_right``, the highest right
  edge ever advertised, only grows.
* With vnet headers the TCP checksum is left partial for the kernel (``NEEDS_CSUM``) and
  bursts larger than one segment go out as one GSO packet; without, it is computed here.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from tunray.net.packet import (
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    PROTO_TCP,
    VNET_F_NEEDS_CSUM,
    finish,
    partial,
    pseudo_sum,
    sum_of,
    v4_base_sum,
    v4_header,
    v6_header,
    vnet_header,
)

from tunray_stack_python.reassembly import OutOfOrder
from tunray_stack_python.recovery import Recovery
from tunray_stack_python.tcp_state import State
from tunray_stack_python.tcp_wire import ACK, FIN, HEADER, M32, PSH, TS_PREFIX, sack_option

if TYPE_CHECKING:
    from tunray_stack_python.core import Core

_II = struct.Struct("!II")
INF = float("inf")
#: How long the ACK of the app's FIN may wait for our own FIN to carry it (passive close),
#: Linux's minimum delayed-ACK time: a short connection's close then costs one segment less.
FIN_ACK_DELAY = 0.04


class TcpBase:
    """A connection's state; instantiate :class:`~tunray_stack_python.tcp.TcpConn`, never this."""

    __slots__ = (
        "ack_now", "ack_pending", "adv_right", "charged", "closed_reset", "core", "cwnd", "delack", "dupacks",
        "fin_acked", "fin_rcvd",
        "fin_rtx", "fin_sent", "fin_wanted", "gso_max", "handle", "handshake_deadline", "held", "ip_base", "irs1",
        "iss", "iss1", "key",
        "last_active", "limit", "local_ip", "local_port", "mss", "ooo", "peer_fin_off", "peer_wscale", "probe",
        "pseudo", "rcv_nxt", "rcv_wscale", "rcvbuf", "read_closed", "read_total", "rec", "remote_ip", "remote_port",
        "retries", "rto", "rto_deadline", "rtt_off", "rtt_time", "rttvar", "sack_ok", "scheduled", "snd_max",
        "snd_nxt", "snd_una", "snd_wnd", "sndbuf", "srtt", "ssthresh", "state", "timer_deadline", "ts_ok",
        "ts_recent", "version", "want_read", "want_write", "wl1",
    )

    def __init__(self, core: Core, key: tuple[bytes, int, bytes, int], version: int, iss: int,
                 handle: int) -> None:
        cfg = core.config
        self.core = core
        self.key = key
        self.version = version
        self.remote_ip, self.remote_port, self.local_ip, self.local_port = key
        self.state = State.SYN_PENDING
        self.iss = iss
        self.iss1 = (iss + 1) & M32
        self.irs1 = 0
        self.handle = handle  # the driver's name for this connection
        self.held = True  # the driver holds the handle (no tcp_close/tcp_abort yet)
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
        self.charged = 0  # bytes held (rcvbuf + ooo) as counted in the core's buffer budget
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
        self.delack = INF  # when a delayed ACK (of the app's FIN) must go out at the latest
        self.ack_now = False
        self.last_active = 0.0
        self.handshake_deadline = INF
        self.timer_deadline = INF

    # --- building our segments ------------------------------------------------------------------

    def _free(self) -> int:
        return self.limit - len(self.rcvbuf)

    def _tsval(self, now: float) -> int:
        return int(now * 1000) & M32

    def _window(self) -> int:
        free = self.limit - len(self.rcvbuf)
        budget = self.core.budget
        capped = False
        if budget is not None and budget.pressure:
            # backpressure: hold and offer no more than an equal share of the buffer budget
            cap = budget.share(len(self.core.conns)) - self.charged
            if free > cap:
                free, capped = cap, True
        if free < 0:
            free = 0
        ws = self.rcv_wscale
        win = free >> ws
        if win > 0xFFFF:
            win = 0xFFFF
        right = self.rcv_nxt + (win << ws)
        if right > self.adv_right:
            self.adv_right = right
        elif capped:
            win = (self.adv_right - self.rcv_nxt) >> ws  # the cap stops growth; it never shrinks the window
        return win

    def recharge(self) -> None:
        """Tell the buffer budget what this connection holds now (in order and out of order)."""
        budget = self.core.budget
        if budget is not None:
            ooo = self.ooo
            held = len(self.rcvbuf) + (ooo.size if ooo is not None else 0)
            if held != self.charged:
                budget.charge(held - self.charged)
                self.charged = held

    def release_budget(self) -> None:
        """The connection is gone and nobody reads it (its ``rcvbuf`` was dropped): out-of-order
        bytes go too, and the budget gets back all it held."""
        self.ooo = None
        budget = self.core.budget
        if budget is not None:
            self.recharge()
            budget.forget(self)

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
        self.delack = INF  # every segment carries the current ACK
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
