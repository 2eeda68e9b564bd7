"""A bounded TTL cache for DNS answers; sans-IO (the caller passes ``now``)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

#: Default bound on cached answers; the least recently stored entry is evicted first.
MAX_ENTRIES = 4096
#: Longest time any answer is kept, whatever its TTL says (seconds).
MAX_TTL = 3600.0


class TTLCache(Generic[K, V]):
    __slots__ = ("_data", "max_entries", "max_ttl")

    def __init__(self, max_entries: int = MAX_ENTRIES, max_ttl: float = MAX_TTL) -> None:
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self.max_entries = max_entries
        self.max_ttl = max_ttl

    def get(self, key: K, now: float) -> V | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[0] <= now:
            del self._data[key]
            return None
        return item[1]

    def put(self, key: K, value: V, ttl: float, now: float) -> None:
        if ttl <= 0 or self.max_entries <= 0:
            return
        self._data[key] = (now + min(ttl, self.max_ttl), value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
