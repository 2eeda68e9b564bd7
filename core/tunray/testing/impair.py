"""A packet device wrapper that loses, duplicates and reorders packets, for loss tests.

Invariants: the wrapper never changes a packet's bytes, only whether, how often and in
which order it passes; every decision comes from one seeded :class:`random.Random`, so
the same seed and traffic replay the same impairment.  At most one written packet is held
back at a time (sent after the next write); reads hold back packets in a backlog that
drains before :meth:`~ImpairedDevice.read` reports the inner device empty.
"""

from __future__ import annotations

import collections
import random

from tunray.device import VNET_HDR_LEN, PacketDevice


class ImpairedDevice(PacketDevice):
    """Loses, duplicates and reorders packets in both directions; seeded, so a failure replays.

    Reading, a reordered packet is handed out after the next one and a duplicate right
    after its original; writing, a reordered packet is sent after the next write.
    """

    def __init__(self, inner: PacketDevice, *, seed: int = 7, loss: float = 0.02, dup: float = 0.01,
                 reorder: float = 0.02) -> None:
        self.inner = inner
        self.mtu = inner.mtu
        self.offloads = inner.offloads
        self._rng = random.Random(seed)
        self._odds = (("lost", loss), ("duplicated", dup), ("reordered", reorder))
        self._backlog: collections.deque[bytes] = collections.deque()
        self._release = False
        self._held: bytes | None = None
        self.stats = {"packets": 0, "lost": 0, "duplicated": 0, "reordered": 0}

    def _fate(self) -> str:
        self.stats["packets"] += 1
        r = self._rng.random()
        for fate, odds in self._odds:
            if r < odds:
                self.stats[fate] += 1
                return fate
            r -= odds
        return "ok"

    def fileno(self) -> int:
        return self.inner.fileno()

    def read(self, size: int = 65536 + VNET_HDR_LEN) -> bytes | None:
        if self._release and self._backlog:
            self._release = False
            return self._backlog.popleft()
        while True:
            packet = self.inner.read(size)
            if packet is None:
                return self._backlog.popleft() if self._backlog else None
            fate = self._fate()
            if fate == "lost":
                continue
            if fate == "reordered":
                self._backlog.append(packet)
                continue
            if fate == "duplicated":
                self._backlog.append(packet)
            self._release = True
            return packet

    def write(self, packet: bytes | bytearray | memoryview) -> bool:
        fate = self._fate()
        if fate == "lost":
            return True
        if fate == "reordered" and self._held is None:
            self._held = bytes(packet)  # the caller may reuse its buffer
            return True
        ok = self.inner.write(packet)
        if fate == "duplicated":
            self.inner.write(packet)
        if self._held is not None:
            held, self._held = self._held, None
            self.inner.write(held)
        return ok

    def close(self) -> None:
        self.inner.close()
