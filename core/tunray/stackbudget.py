"""The bytes a stack holds for all its flows together: one budget every stack core shares.

Theory of operation.  A stack holds what an app sent until the outbound reads it; each
flow is bounded by its receive window (``tcpBufferSize``), but thousands of flows whose
upstream stalls would each fill theirs.  :class:`BufferBudget` bounds the sum
(``maxBufferedBytes``) the way a kernel's ``tcp_mem`` does, on the bytes really held
(received, not yet read: in order and out of order, and queued datagrams), so idle
connections cost nothing however wide their windows:

* **Hard bound.**  A core :meth:`~BufferBudget.charge`\\ s every byte it keeps and
  :meth:`~BufferBudget.release`\\ s it when read or discarded; before keeping bytes it asks
  :meth:`~BufferBudget.room`.  A TCP segment that does not fit is cut to the room (or
  dropped whole, for a core that cannot cut) and the rest is not acknowledged, so no byte
  that was acknowledged is ever dropped: the app's TCP sends it again.  A datagram that
  does not fit is dropped, as a network would.
* **Backpressure.**  Above half the budget (:attr:`~BufferBudget.pressure`) a flow's
  receive window stops growing past an equal share of the budget
  (:meth:`~BufferBudget.share`), so stalled flows close their windows before the hard
  bound is reached, and a flow that reads keeps a window.
* **Waking.**  A flow that was cut or refused is remembered (:meth:`~BufferBudget.denied`);
  once :data:`WAKE_MIN` bytes are free again the core sends it an ACK with its window
  (:meth:`~BufferBudget.take_waiters`), so the app's TCP resumes.

Counting.  ``tcp_buffer_budget_full`` counts the times the budget ran out (a flow was
denied while none was waiting), not every cut segment; the driver logs the first one
(:data:`tunray.stackdriver.LIMITS`).  :meth:`BufferBudget.stats` gives the gauges.
"""

from __future__ import annotations

from collections.abc import Callable

FULL = "tcp_buffer_budget_full"
WAKE_MIN = 16 << 10  # free bytes before waiting flows get window updates (about ten segments)


class BufferBudget:
    """``limit`` bytes shared by every flow of one stack core; see the module docstring."""

    __slots__ = ("_count", "_short", "limit", "peak", "used", "waiters")

    def __init__(self, limit: int, count: Callable[[str, int], None]) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._short = False  # a flow was denied and no room came back yet
        self._count = count
        self.waiters: dict[object, None] = {}

    def room(self) -> int:
        """Bytes that may still be kept."""
        free = self.limit - self.used
        return free if free > 0 else 0

    @property
    def pressure(self) -> bool:
        """More than half the budget is held: windows stop growing past :meth:`share`."""
        return self.used * 2 > self.limit

    def share(self, flows: int) -> int:
        """An equal share of the budget among *flows*."""
        return self.limit // (flows if flows > 0 else 1)

    def charge(self, n: int) -> None:
        """*n* more bytes are held (negative: fewer)."""
        used = self.used = self.used + n
        if used > self.peak:
            self.peak = used

    def release(self, n: int) -> None:
        """*n* held bytes were read or discarded."""
        self.used -= n

    def denied(self, who: object) -> None:
        """*who* could not keep what it received: wake it when room comes back."""
        self.waiters[who] = None
        if not self._short:
            self._short = True
            self._count(FULL, 1)

    def forget(self, who: object) -> None:
        self.waiters.pop(who, None)

    def take_waiters(self) -> list[object]:
        """The flows to send window updates to, once at least :data:`WAKE_MIN` is free (else none)."""
        if not self.waiters or self.room() < min(WAKE_MIN, self.limit // 4 or 1):
            return []
        self._short = False
        woken = list(self.waiters)
        self.waiters.clear()
        return woken

    def stats(self) -> dict[str, int]:
        return {"buffered_bytes": self.used, "buffered_bytes_peak": self.peak, "buffered_bytes_limit": self.limit}
