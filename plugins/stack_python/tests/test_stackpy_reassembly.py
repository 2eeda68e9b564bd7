"""Out-of-order block store against a plain byte-array model."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from tunray_stack_python.reassembly import OutOfOrder

DATA = bytes(range(256)) * 4


@given(st.lists(st.tuples(st.integers(1, 1000), st.integers(1, 200)), max_size=40))
def test_blocks_match_model(segments: list[tuple[int, int]]) -> None:
    ooo = OutOfOrder()
    have = [False] * len(DATA)
    for off, n in segments:
        end = min(off + n, len(DATA))
        ooo.add(off, DATA[off:end])
        for k in range(off, end):
            have[k] = True
    # Blocks are disjoint, sorted, non-adjacent and hold the right bytes.
    assert ooo.starts == sorted(ooo.starts)
    for start, block in zip(ooo.starts, ooo.blocks, strict=True):
        assert bytes(block) == DATA[start:start + len(block)]
        assert all(have[start:start + len(block)])
        assert start == 0 or not have[start - 1]
    assert ooo.size == sum(have)
    for a, b in ooo.sack_blocks(4):
        assert all(have[a:b])
    # Filling the front releases everything contiguous.
    ooo.add(0, DATA[:1])
    ready = ooo.pop_ready(0)
    assert ready is not None
    start, block = ready
    have[0] = True
    contiguous = next((k for k, h in enumerate(have) if not h), len(DATA))
    assert start == 0 and bytes(block) == DATA[:contiguous]
