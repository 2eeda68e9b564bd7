"""The shared protobuf varint codec."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tunray.net.protobuf import VarintError, decode_varint, encode_varint


@given(st.integers(min_value=0, max_value=2**64 - 1), st.binary(max_size=4))
def test_round_trip_with_trailing_bytes(n: int, tail: bytes) -> None:
    raw = encode_varint(n)
    assert decode_varint(raw + tail, 0) == (n, len(raw))


def test_known_bytes() -> None:
    assert encode_varint(300) == b"\xac\x02"
    assert encode_varint(0) == b"\x00"


@pytest.mark.parametrize(("raw", "end"), [(b"\xac", None), (b"\xac\x02", 1), (b"\xff" * 10 + b"\x01", None)])
def test_truncated_or_overlong(raw: bytes, end: int | None) -> None:
    with pytest.raises(VarintError):
        decode_varint(raw, 0, end)
