"""Half-open TCP handshakes of a stack core: a global and a per-source budget, oldest first.

Theory of operation.  A *half-open* connection is one whose SYN arrived but whose handshake
the app has not completed; with the lazy handshake each one holds an upstream dial.  A
spoofed SYN flood must not be able to hold many of them, so every stack keeps them in a
:class:`HalfOpenTable` bounded by ``maxHalfOpen`` (all of them) and
``maxHalfOpenPerSource`` (one app address), as a kernel bounds its SYN queue.  The table
only keeps order and counts; what to do with a SYN beyond the budget is the stack's:

* a stack that can answer statelessly (the python stack's SYN cookies) answers the SYN
  without state once :meth:`HalfOpenTable.over` says so;
* a stack that cannot (lwIP's handshake, the kernel behind the system stack's NAT) asks
  :meth:`HalfOpenTable.admit`.  While the budget has room every SYN gets a slot (an app's
  burst of connections is not a flood).  Once it is full, handshakes older than the
  handshake timeout go first; then a SYN from a source already at its share is dropped
  without state (counted ``tcp_half_open_dropped``), as a kernel drops SYNs its full queue
  cannot take, so one address, however fast it sends, never pushes out anyone else's
  handshake; any other SYN takes the slot of the oldest handshake (counted
  ``tcp_half_open_evicted``).  Under a flood from many addresses every SYN thus holds its
  slot for ``maxHalfOpen / rate`` seconds, and a real client whose handshake completes
  within that gets through; a SYN that was dropped or evicted is retransmitted by a real
  client a second later.  An evicted handshake is forgotten
  silently (no RST: the flooder's sources are spoofed, and a real client retransmits its
  SYN); a packet that later arrives for it is answered as for any unknown connection.

Insertion order is age order (dicts keep it), so finding the oldest costs nothing.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator

EVICTED = "tcp_half_open_evicted"
DROPPED = "tcp_half_open_dropped"


class HalfOpenTable:
    """The half-open handshakes of one core, keyed by the stack's own connection object."""

    __slots__ = ("_by_src", "_since", "max_per_source", "max_total", "timeout")

    def __init__(self, max_total: int, max_per_source: int, timeout: float) -> None:
        self.max_total = max_total
        self.max_per_source = max_per_source
        self.timeout = timeout
        self._since: dict[Hashable, tuple[bytes, float]] = {}  # oldest first
        self._by_src: dict[bytes, dict[Hashable, None]] = {}

    def __len__(self) -> int:
        return len(self._since)

    def __contains__(self, key: object) -> bool:
        return key in self._since

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._since)

    def add(self, key: Hashable, src: bytes, now: float) -> None:
        """A SYN from *src* now holds a handshake slot."""
        self._since[key] = (src, now)
        self._by_src.setdefault(src, {})[key] = None

    def remove(self, key: Hashable) -> bool:
        """*key*'s handshake completed or ended; False if it was not half-open."""
        entry = self._since.pop(key, None)
        if entry is None:
            return False
        src = entry[0]
        mine = self._by_src.get(src)
        if mine is not None:
            mine.pop(key, None)
            if not mine:
                del self._by_src[src]
        return True

    def stale(self, now: float) -> list[Hashable]:
        """The handshakes older than the timeout, oldest first (only looked for while the table is full)."""
        if len(self._since) < self.max_total:
            return []
        limit = now - self.timeout
        out: list[Hashable] = []
        for key, (_src, since) in self._since.items():
            if since > limit:
                break
            out.append(key)
        return out

    def over(self, src: bytes) -> bool:
        """True if a new SYN from *src* does not fit: the table or *src*'s share is full."""
        if len(self._since) >= self.max_total:
            return True
        mine = self._by_src.get(src)
        return mine is not None and len(mine) >= self.max_per_source

    def admit(self, src: bytes, now: float) -> list[Hashable] | None:
        """For a stack without SYN cookies: ``None`` if a new SYN from *src* must be dropped (the
        budget and its source's share are full), else the handshakes to evict first (often none)."""
        if len(self._since) < self.max_total:
            return []
        victims = self.stale(now)
        if victims:
            return victims
        mine = self._by_src.get(src)
        if mine is not None and len(mine) >= self.max_per_source:
            return None
        return [next(iter(self._since))]
