"""Sender-side loss recovery state: the SACK scoreboard and one recovery episode.

Theory of operation (RFC 6675 loss recovery, paced by RFC 6937 proportional rate reduction).

* A connection allocates a :class:`Recovery` only once it sees a SACK block, a duplicate
  ACK or a timeout; a clean flow never pays for one.
* ``blocks`` is the scoreboard: sorted, disjoint ``[start, end)`` data offsets the peer
  SACKed above ``snd_una``; ``sacked`` is their total size.
* A hole is *lost* when it lies below :meth:`lost_edge`: the start of the lowest SACK block
  that has more than two segments' worth (or three blocks) of SACKed data at or above it
  (RFC 6675 ``IsLost``).  When the sender has nothing new to send (the tail of a burst)
  and the peer SACKed the last byte sent, everything below the highest SACK block is
  lost: no further SACKs would ever arrive to prove it.  After a timeout (``loss``) every unSACKed byte below ``recover`` is lost.
* Holes are retransmitted in order; ``high_rxt`` is the highest retransmitted offset.
  Each retransmission is remembered with the ``snd_max`` it was sent at: once the peer
  SACKs data more than a segment beyond that mark while the retransmitted range is still
  missing, the retransmission was lost too and goes to ``relost`` (sent first, next time).
  Without SACK (NewReno, RFC 6582) each partial ACK queues the segment at ``snd_una``.
* ``pipe`` is the data still in the network: outstanding, minus SACKed, minus lost and
  not (successfully) retransmitted.
"""

from __future__ import annotations

import bisect


class Recovery:
    __slots__ = ("active", "blocks", "delivered", "force", "fs", "high_rxt", "loss", "out", "recover",
                 "relost", "rtx", "sacked")

    def __init__(self) -> None:
        self.blocks: list[tuple[int, int]] = []
        self.sacked = 0
        self.active = False  # inside a recovery episode
        self.loss = False  # the episode began with a retransmission timeout
        self.recover = 0  # the episode ends when snd_una reaches this
        self.high_rxt = 0
        self.force = False  # send one retransmission whatever the budget (entry into recovery)
        self.delivered = 0  # PRR: data delivered to the peer since the episode began
        self.out = 0  # PRR: data sent since the episode began
        self.fs = 1  # PRR: the flight when the episode began
        self.rtx: list[tuple[int, int, int]] = []
        self.relost: list[tuple[int, int]] = []

    # --- the scoreboard ------------------------------------------------------------------------

    def add(self, ranges: list[tuple[int, int]], una: int, snd_max: int) -> None:
        """Merge SACKed ranges (data offsets), ignoring what lies outside ``[una, snd_max)``."""
        blocks = self.blocks
        for a, b in ranges:
            if a < una:
                a = una
            if b > snd_max:
                b = snd_max
            if a >= b:
                continue
            i = bisect.bisect_left(blocks, (a, b))
            if i and blocks[i - 1][1] >= a:  # touches the previous block
                i -= 1
                a = blocks[i][0]
                if blocks[i][1] > b:
                    b = blocks[i][1]
            j = i
            while j < len(blocks) and blocks[j][0] <= b:
                if blocks[j][1] > b:
                    b = blocks[j][1]
                j += 1
            blocks[i:j] = [(a, b)]
        self.sacked = sum(b - a for a, b in blocks)

    def advance(self, una: int) -> None:
        """Forget what the cumulative ACK now covers."""
        blocks = self.blocks
        if blocks and blocks[0][0] < una:
            self.blocks = blocks = [(max(a, una), b) for a, b in blocks if b > una]
            self.sacked = sum(b - a for a, b in blocks)
        if self.rtx and self.rtx[0][1] <= una:
            self.rtx = [r for r in self.rtx if r[1] > una]
        if self.relost and self.relost[0][1] <= una:
            self.relost = [r for r in self.relost if r[1] > una]

    def unsacked(self, a: int, b: int) -> int:
        """How many bytes of ``[a, b)`` are not SACKed."""
        if a >= b:
            return 0
        n = b - a
        for s, e in self.blocks:
            if e <= a:
                continue
            if s >= b:
                break
            n -= min(e, b) - max(s, a)
        return n

    def next_hole(self, start: int, stop: int) -> tuple[int, int] | None:
        """The first unSACKed range at or after *start*, below *stop*."""
        for s, e in self.blocks:
            if e <= start:
                continue
            if s > start:
                break
            start = e
        if start >= stop:
            return None
        i = bisect.bisect_right(self.blocks, (start, stop))
        end = self.blocks[i][0] if i < len(self.blocks) and self.blocks[i][0] < stop else stop
        return start, end

    def lost_edge(self, una: int, snd_max: int, seg: int, tail: bool) -> int:
        """Holes below this offset are lost (see the module docstring)."""
        if self.loss:
            return max(self.recover, una)
        blocks = self.blocks
        if not blocks:
            return una
        if tail and blocks[-1][1] >= snd_max:
            return blocks[-1][0]
        acc = 0
        n = 0
        for k in range(len(blocks) - 1, -1, -1):
            s, e = blocks[k]
            acc += e - s
            n += 1
            if acc > 2 * seg or n >= 3:
                return s
        return una

    def pipe(self, una: int, snd_max: int, edge: int) -> int:
        lost = self.unsacked(max(self.high_rxt, una), edge)
        for a, b in self.relost:
            lost += self.unsacked(max(a, una), b)
        p = snd_max - una - self.sacked - lost
        return p if p > 0 else 0

    def check_relost(self, seg: int) -> None:
        """Move retransmissions overtaken by later SACKed data to ``relost``."""
        if not self.rtx or not self.blocks:
            return
        top = self.blocks[-1][1]
        keep: list[tuple[int, int, int]] = []
        for r in self.rtx:
            if top > r[2] + seg and self.unsacked(r[0], r[1]):
                self.relost.append((r[0], r[1]))
            else:
                keep.append(r)
        self.rtx = keep

    def begin(self, una: int, snd_max: int, loss: bool) -> None:
        self.active = True
        self.loss = loss
        self.recover = snd_max
        self.high_rxt = una
        self.force = not loss
        self.delivered = 0
        self.out = 0
        self.fs = max(snd_max - una, 1)
        self.rtx = []
        self.relost = []

    def end(self) -> None:
        self.active = self.loss = self.force = False
        self.rtx = []
        self.relost = []
