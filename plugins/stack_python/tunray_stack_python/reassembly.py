"""Out-of-order receive data as a few merged blocks.

After a loss the peer keeps sending: segments arrive in order *behind a hole*, so
they extend the same block.  Blocks are kept sorted, disjoint and non-adjacent
(``starts`` is a parallel list for bisect), so insertion, draining and building SACK
blocks cost O(number of holes), not O(number of segments).
"""

from __future__ import annotations

import bisect


class OutOfOrder:
    __slots__ = ("blocks", "last", "size", "starts")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.blocks: list[bytearray] = []
        self.size = 0
        self.last = -1  # start of the block that received the latest segment

    def __bool__(self) -> bool:
        return bool(self.starts)

    def add(self, off: int, data: memoryview | bytes) -> None:
        """Store ``data`` at offset ``off`` (the caller clipped it to the window)."""
        starts, blocks = self.starts, self.blocks
        end = off + len(data)
        i = bisect.bisect_right(starts, off) - 1
        if i >= 0 and starts[i] + len(blocks[i]) >= off:
            block_end = starts[i] + len(blocks[i])
            if end <= block_end:
                self.last = starts[i]
                return  # a duplicate
            blocks[i] += data[block_end - off:]
            self.size += end - block_end
        else:
            i += 1
            starts.insert(i, off)
            blocks.insert(i, bytearray(data))
            self.size += len(data)
        # Swallow the following blocks this one now reaches.
        cur_end = starts[i] + len(blocks[i])
        while i + 1 < len(starts) and starts[i + 1] <= cur_end:
            nstart = starts.pop(i + 1)
            nblock = blocks.pop(i + 1)
            nend = nstart + len(nblock)
            self.size -= len(nblock)
            if nend > cur_end:
                blocks[i] += memoryview(nblock)[cur_end - nstart:]
                self.size += nend - cur_end
                cur_end = nend
        self.last = starts[i]

    def pop_ready(self, rcv_nxt: int) -> tuple[int, bytearray] | None:
        """Remove and return the first block if it starts at or before ``rcv_nxt``."""
        if not self.starts or self.starts[0] > rcv_nxt:
            return None
        start = self.starts.pop(0)
        block = self.blocks.pop(0)
        self.size -= len(block)
        return start, block

    def sack_blocks(self, limit: int) -> list[tuple[int, int]]:
        """Up to *limit* ``(start, end)`` ranges, the most recently extended one first (RFC 2018)."""
        out: list[tuple[int, int]] = []
        starts, blocks = self.starts, self.blocks
        j = bisect.bisect_left(starts, self.last)
        if j < len(starts) and starts[j] == self.last:
            out.append((starts[j], starts[j] + len(blocks[j])))
        for k in range(len(starts) - 1, -1, -1):
            if len(out) >= limit:
                break
            if starts[k] != self.last:
                out.append((starts[k], starts[k] + len(blocks[k])))
        return out
