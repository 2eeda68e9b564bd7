"""Protocol Buffers base-128 varints, for the few hand-decoded messages tunray meets.

Xray's geodata files, the VLESS addons and gRPC's ``Hunk`` are tiny protobuf messages;
a varint codec is all they need, so there is no protobuf dependency.  A varint is at
most 10 bytes (64 bits); :func:`decode_varint` raises :class:`VarintError` (a
``ValueError``) when the buffer ends inside one or it runs longer; callers turn that into
their own error type.
"""

from __future__ import annotations


class VarintError(ValueError):
    pass


def encode_varint(n: int) -> bytes:
    """The varint encoding of a non-negative integer."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def decode_varint(buf: bytes | bytearray | memoryview, pos: int, end: int | None = None) -> tuple[int, int]:
    """Decode the varint at *pos* (not reading at or past *end*); return (value, next position)."""
    stop = len(buf) if end is None else end
    value = 0
    for shift in range(0, 70, 7):
        if pos >= stop:
            raise VarintError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise VarintError("varint longer than 10 bytes")
