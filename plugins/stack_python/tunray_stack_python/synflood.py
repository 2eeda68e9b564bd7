"""SYN-flood defence for the core: SYN cookies beyond the half-open budget.

Theory of operation.  A *half-open* connection is one whose SYN arrived but whose
handshake the app has not completed (``SYN_PENDING`` while the lazy handshake dials the
upstream, then ``SYN_RCVD`` until the app's ACK).  Each one may cost an upstream dial,
so a spoofed SYN flood must not be able to hold many of them.  Like a kernel:

* The **budget** is the core's :class:`tunray.halfopen.HalfOpenTable`, shared with the
  other stacks: ``maxHalfOpen`` in all and ``maxHalfOpenPerSource`` per app address
  (TUN inbound settings).  When it is full, handshakes older than the handshake timeout
  are reset first (counted ``tcp_half_open_evicted``).
* **SYN cookies** for a SYN the budget cannot hold (all of it, or its source's share, is
  taken): the SYN is answered statelessly, with the connection's identity folded into our
  initial sequence number, and no dial starts.  Spoofed sources never answer, so they
  cost nothing; a real client's ACK proves the cookie and the connection is created right
  then, already established (``TcpOpened`` with ``pending=False``: the stateless eager
  answer), and dialled.  Counted ``tcp_syn_cookies_sent``, ``tcp_syn_cookies_accepted``,
  ``tcp_syn_cookies_bad``.  One source flooding thus gets cookies, never anyone else's slot.

The cookie (our ISN) is ``slot(5 bits) | mss index(3 bits) | MAC(24 bits)``: ``slot`` is
``now // 64`` mod 32 and a cookie is good for the current and the previous slot (64 to
128 s); the MAC is a keyed BLAKE2s over both addresses and ports, the client's ISN and
the slot, under a per-core random key.  Options other than the MSS are not kept, so a
cookie connection runs without window scaling, SACK and timestamps (RFC 4987, 3.6).
"""

from __future__ import annotations

import hashlib
import os
import struct

COOKIE_SLOT = 64.0  # seconds per cookie counter step
MSS_TABLE = (536, 1220, 1440, 1460, 4036, 8960, 9000, 65495)
_PORTS = struct.Struct("!HHIB")


class SynCookies:
    """Stateless ISNs for SYNs the budget cannot hold; :meth:`check` recognises the ACK."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or os.urandom(16)

    def _mac(self, src: bytes, sport: int, dst: bytes, dport: int, client_isn: int, slot: int) -> int:
        h = hashlib.blake2s(src + dst + _PORTS.pack(sport, dport, client_isn, slot), digest_size=3, key=self._key)
        return int.from_bytes(h.digest())

    def make(self, src: bytes, sport: int, dst: bytes, dport: int, client_isn: int, mss: int, now: float) -> int:
        """Our ISN for a SYN (client ISN *client_isn*, offering *mss*)."""
        slot = int(now // COOKIE_SLOT) & 0x1F
        index = 0
        for i, m in enumerate(MSS_TABLE):
            if m <= mss:
                index = i
        return slot << 27 | index << 24 | self._mac(src, sport, dst, dport, client_isn, slot)

    def check(self, src: bytes, sport: int, dst: bytes, dport: int, seq: int, ack: int, now: float) -> int | None:
        """The MSS the cookie encodes if ``ack - 1`` is our cookie for the SYN that had ``seq - 1``, else None."""
        cookie = (ack - 1) & 0xFFFFFFFF
        client_isn = (seq - 1) & 0xFFFFFFFF
        slot = cookie >> 27
        current = int(now // COOKIE_SLOT) & 0x1F
        if (current - slot) & 0x1F > 1:
            return None
        if self._mac(src, sport, dst, dport, client_isn, slot) != cookie & 0xFFFFFF:
            return None
        return MSS_TABLE[cookie >> 24 & 7]
