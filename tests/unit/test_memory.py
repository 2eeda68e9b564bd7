"""tunray.memory: freed heap pages go back to the kernel once, after a burst (glibc)."""

from __future__ import annotations

import asyncio
import os

import pytest
from tunray import memory

pytestmark = pytest.mark.skipif(memory._LIBC is None, reason="needs glibc's mallinfo2/malloc_trim")

PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


async def test_trimmer_returns_a_fragmented_heap_once() -> None:
    # 64 KiB buffers come from the heap (below the mmap threshold); keeping every tenth alive
    # pins the heap's top, so only malloc_trim can give the freed ones back.
    burst = [bytearray(os.urandom(16)) * 4096 for _ in range(1200)]
    keep = burst[::10]
    del burst
    freed = memory.heap_free_bytes()
    assert freed > 40 << 20
    before = _rss()
    trimmer = memory.Trimmer(every=0.02, above=1 << 20)
    trimmer.start()
    try:
        await asyncio.sleep(0.3)
    finally:
        trimmer.stop()
    assert trimmer.trims == 1  # the heap did not change after the first trim: no second one
    assert before - _rss() > 30 << 20, f"RSS {before >> 20} -> {_rss() >> 20} MiB"
    assert sum(len(b) for b in keep) == 120 * 65536  # the live buffers are untouched


async def test_an_idle_heap_is_left_alone() -> None:
    trimmer = memory.Trimmer(every=0.02, above=1 << 40)
    trimmer.start()
    await asyncio.sleep(0.1)
    trimmer.stop()
    assert trimmer.trims == 0
