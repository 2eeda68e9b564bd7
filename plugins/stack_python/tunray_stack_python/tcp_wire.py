"""TCP header and option layouts (RFC 9293, RFC 7323, RFC 2018).

Header::

    source port (16) | destination port (16)
    sequence number (32)
    acknowledgment number (32)
    data offset (4) | reserved (4) | flags CWR ECE URG ACK PSH RST SYN FIN (8) | window (16)
    checksum (16) | urgent pointer (16)
    options (data offset * 4 - 20 bytes)

Options: 0 EOL, 1 NOP, 2 MSS (len 4), 3 window scale (len 3), 4 SACK-permitted (len 2),
5 SACK (len 2 + 8n), 8 timestamps (len 10: TSval, TSecr).
"""

from __future__ import annotations

import struct

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10

M32 = 0xFFFFFFFF

HEADER = struct.Struct("!HHIIBBHHH")
_II = struct.Struct("!II")
_H = struct.Struct("!H")
TS_PREFIX = b"\x01\x01\x08\x0a"


class Options:
    """Options of one segment; only SYNs and segments with SACK blocks build one."""

    __slots__ = ("mss", "sack", "sack_ok", "ts", "wscale")

    def __init__(self) -> None:
        self.mss = 0
        self.wscale = -1
        self.sack_ok = False
        self.ts: tuple[int, int] | None = None
        self.sack: list[tuple[int, int]] = []


def parse_options(data: bytes, start: int, end: int) -> Options | tuple[int, int] | None:
    """Parse options in ``data[start:end]``.

    Fast path: the usual 12-byte ``NOP NOP TS`` block returns ``(tsval, tsecr)``.
    Otherwise an :class:`Options`; ``None`` if malformed.
    """
    if end - start == 12 and data[start:start + 4] == TS_PREFIX:
        return _II.unpack_from(data, start + 4)
    opts = Options()
    i = start
    while i < end:
        kind = data[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end:
            return None
        length = data[i + 1]
        if length < 2 or i + length > end:
            return None
        if kind == 2:
            if length != 4:
                return None
            opts.mss = _H.unpack_from(data, i + 2)[0]
        elif kind == 3:
            if length != 3:
                return None
            opts.wscale = min(data[i + 2], 14)
        elif kind == 4:
            if length != 2:
                return None
            opts.sack_ok = True
        elif kind == 5:
            if (length - 2) % 8:
                return None
            for j in range(i + 2, i + length, 8):
                opts.sack.append(_II.unpack_from(data, j))
        elif kind == 8:
            if length != 10:
                return None
            opts.ts = _II.unpack_from(data, i + 2)
        i += length
    return opts


def syn_options(mss: int, wscale: int, sack_ok: bool, ts: tuple[int, int] | None) -> bytes:
    """Options for our SYN-ACK: only what the peer offered (``wscale < 0``: not offered)."""
    out = b"\x02\x04" + _H.pack(min(mss, 0xFFFF))
    if sack_ok:
        out += b"\x01\x01\x04\x02"
    if ts is not None:
        out += TS_PREFIX + _II.pack(*ts)
    if wscale >= 0:
        out += b"\x01\x03\x03" + bytes((wscale,))
    return out


def sack_option(blocks: list[tuple[int, int]]) -> bytes:
    """``NOP NOP SACK`` with up to 3 (left, right) wire-sequence blocks."""
    blocks = blocks[:3]
    return b"\x01\x01\x05" + bytes((2 + 8 * len(blocks),)) + b"".join(_II.pack(a, b) for a, b in blocks)


def seq_delta(a: int, b: int) -> int:
    """``a - b`` in 32-bit sequence space, as a signed int."""
    d = (a - b) & M32
    return d - 0x100000000 if d & 0x80000000 else d
