"""The bytes a stack holds for all its flows together: one budget every stack core shares.

Theory of operation.  A stack buffers what an app sent until the outbound reads it; each
flow is bounded by its receive window (``tcpBufferSize``), but thousands of flows whose
upstream stalls would each fill theirs.  :class:`BufferBudget` bounds the sum
(``maxBufferedBytes``) the way TCP can honour without dropping a byte it accepted: a
flow's *reservation* is the room its advertised window promises (right edge minus bytes
read).  A window may only grow by what :meth:`BufferBudget.reserve` grants; reading
releases.  Since a TCP receiver never takes bytes beyond the edge it advertised, the bytes
held never exceed the reservations, and the reservations never exceed the budget.  When
the budget is spent, windows stop opening (the apps' TCP waits, as for a slow reader);
flows denied room wait in :attr:`BufferBudget.waiters` and the core sends them a window
update once enough is free again (:meth:`BufferBudget.take_waiters`).

UDP.  A datagram queued for the driver reserves its size and releases it when read; one
the budget has no room for is dropped (:mod:`tunray.stackudp`), as a network would.

Fairness.  Above half the budget a flow may only grow to an equal share of the budget
among the flows holding room, so a few stalled flows cannot take it all from the rest.

Counting.  ``tcp_buffer_budget_full`` counts the times the budget ran out (a flow was
denied room while none was being denied), not every denial; the driver logs the first
one (:data:`tunray.stackdriver.LIMITS`).  :meth:`BufferBudget.stats` gives the gauges.
"""

from __future__ import annotations

from collections.abc import Callable

FULL = "tcp_buffer_budget_full"
WAKE_MIN = 16 << 10  # free bytes before waiting flows get window updates (about ten segments)


class BufferBudget:
    """``limit`` bytes shared by every flow of one stack core; see the module docstring."""

    __slots__ = ("_count", "_holders", "_pressure", "_short", "limit", "peak", "used", "waiters")

    def __init__(self, limit: int, count: Callable[[str, int], None]) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._pressure = limit // 2
        self._holders = 0  # flows holding a reservation (for the fair share)
        self._short = False  # a reservation was cut and no release brought room back yet
        self._count = count
        self.waiters: dict[object, None] = {}

    def reserve(self, want: int, held: int) -> int:
        """Up to *want* more bytes for a flow that already holds *held*; the caller handles a shortfall
        (:meth:`denied` for a TCP window, a drop for a datagram)."""
        used = self.used
        if used + want > self._pressure:
            fair = self.limit // max(self._holders + (held == 0), 1)
            if held + want > fair:
                want = max(fair - held, 0)
        free = self.limit - used
        grant = want if want <= free else max(free, 0)
        if grant:
            if not held:
                self._holders += 1
            self.used = used = used + grant
            if used > self.peak:
                self.peak = used
        return grant

    def denied(self, who: object) -> None:
        """*who* got less than it needs to keep its window open: wake it when room comes back."""
        self.waiters[who] = None
        if not self._short:
            self._short = True
            self._count(FULL, 1)

    def release(self, n: int, held_after: int) -> None:
        """*n* reserved bytes are back (read, discarded or the flow ended); the flow still holds *held_after*."""
        if n <= 0:
            return
        self.used -= n
        if held_after <= 0:
            self._holders -= 1

    def forget(self, who: object) -> None:
        self.waiters.pop(who, None)

    def take_waiters(self) -> list[object]:
        """The flows to send window updates to, once at least :data:`WAKE_MIN` is free (else none)."""
        if not self.waiters or self.limit - self.used < min(WAKE_MIN, self.limit // 4 or 1):
            return []
        self._short = False
        woken = list(self.waiters)
        self.waiters.clear()
        return woken

    def stats(self) -> dict[str, int]:
        return {"buffered_bytes": self.used, "buffered_bytes_peak": self.peak,
                "buffered_bytes_limit": self.limit}
