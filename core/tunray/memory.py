"""Giving freed heap memory back to the kernel after a burst of traffic.

Theory of operation.  Buffers above Python's small-object limit (512 bytes: packets,
socket reads, TCP receive and send buffers) come from glibc's ``malloc``.  glibc returns
a freed region to the kernel only when it sits at the top of the heap; anything below a
still-live allocation stays in the process as free space.  After a burst (an iperf3 run,
a few thousand short connections) a worker kept ~15 MiB of such free space for good
(``bench/bench_mem.py``).  ``malloc_trim(0)`` hands every free page in every arena back
(``MADV_DONTNEED``) without moving live data.

:class:`Trimmer` asks glibc every :data:`CHECK_EVERY` seconds how much free space its
heap holds (``mallinfo2``, a walk over the free lists) and trims when that exceeds
:data:`TRIM_ABOVE` and the heap changed since the last trim (a trim does not change the
free-space figure, it only releases the pages behind it): an idle process pays one cheap
check per interval, a busy one at most one trim per interval.  On a libc without these
calls (musl) it does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from typing import Any

CHECK_EVERY = 10.0  # seconds
TRIM_ABOVE = 2 << 20  # bytes of free heap space before a trim is worth it


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _libc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):  # not glibc >= 2.33
        return None
    return libc


_LIBC = _libc()


def heap_free_bytes() -> int:
    """Free space glibc's heap holds (``mallinfo2().fordblks``); 0 where unknown."""
    return _heap()[2]


def _heap() -> tuple[int, int, int, int]:
    """(arena, in use, free, mmapped) bytes of glibc's heap; zeros where unknown."""
    if _LIBC is None:
        return (0, 0, 0, 0)
    m = _LIBC.mallinfo2()
    return (int(m.arena), int(m.uordblks), int(m.fordblks), int(m.hblkhd))


def trim() -> bool:
    """Return free heap pages to the kernel; True if glibc released any."""
    return _LIBC is not None and bool(_LIBC.malloc_trim(0))


class Trimmer:
    """Checks the heap every *every* seconds on the running loop and trims above *above* bytes free."""

    def __init__(self, every: float = CHECK_EVERY, above: int = TRIM_ABOVE) -> None:
        self.every = every
        self.above = above
        self.trims = 0
        self._trimmed: tuple[int, int, int, int] | None = None  # the heap right after the last trim
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        if _LIBC is None or self._handle is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_later(self.every, self._check)

    def _check(self) -> None:
        assert self._loop is not None
        heap = _heap()
        if heap[2] > self.above and heap != self._trimmed:
            trim()
            self.trims += 1
            self._trimmed = _heap()
        self._handle = self._loop.call_later(self.every, self._check)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
