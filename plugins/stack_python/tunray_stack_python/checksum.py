"""The Internet checksum (RFC 1071) without a per-byte Python loop.

Theory: the one's-complement sum of 16-bit big-endian words is congruent to the
whole buffer read as one big-endian integer modulo ``0xFFFF`` (because
``2**16 == 1 (mod 0xFFFF)``).  CPython's ``int.from_bytes`` and a modulo by a
one-digit divisor both run in C, so summing 64 KiB costs tens of microseconds.

Sums are kept as plain ints "modulo 0xFFFF" and may be added freely; only the
final :func:`finish` turns one into the value stored in a header.  An odd-length
buffer is padded with a zero byte, which for a big-endian integer is a shift by 8.
The buffer must start on an even offset of the checksummed region, as every
caller's does (IP and transport headers are multiples of 4 bytes).
"""

from __future__ import annotations

_FROM = int.from_bytes


def sum_of(data: bytes | bytearray | memoryview) -> int:
    """The one's-complement sum of *data* as an int in ``0..0xFFFE`` (mod 0xFFFF)."""
    value = _FROM(data, "big")
    if len(data) & 1:
        value <<= 8
    return value % 0xFFFF


def finish(total: int) -> int:
    """The checksum field for a region whose words (checksum field zero) sum to *total*.

    Never returns 0, so it is also right for UDP (where 0 means "no checksum").
    """
    return 0xFFFF - total % 0xFFFF


def partial(total: int) -> int:
    """The field value for ``NEEDS_CSUM`` offload: the folded pseudo-header sum, not complemented."""
    return total % 0xFFFF or 0xFFFF


def valid(total: int) -> bool:
    """True if a region that includes its checksum field sums to zero (mod 0xFFFF)."""
    return total % 0xFFFF == 0


def pseudo_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """The IPv4/IPv6 pseudo-header's contribution (addresses, protocol, L4 length)."""
    return _FROM(src, "big") + _FROM(dst, "big") + proto + length
