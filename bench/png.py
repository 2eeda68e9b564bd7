"""A tiny bar-chart PNG writer: pure Python, zlib only.

Why not matplotlib: the chart is a handful of labelled horizontal bars, and a
dependency of ~40 MB (numpy, pillow, fonts) for that would make ``bench/run.py`` fail or
ask for an extra install step on every fresh machine.  This module draws into an RGB
byte array with a built-in 5x7 pixel font and writes a PNG (IHDR, one zlib IDAT, IEND).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

RGB = tuple[int, int, int]

# 5x7 glyphs, one string of 7 rows per character, each row 5 bits as a hex digit pair.
_FONT: dict[str, str] = {
    "A": "0e11111f111111", "B": "1e11111e11111e", "C": "0e11101010110e", "D": "1e11111111111e",
    "E": "1f10101e10101f", "F": "1f10101e101010", "G": "0e11101713110f", "H": "1111111f111111",
    "I": "0e04040404040e", "J": "0702020202120c", "K": "11121418141211", "L": "1010101010101f",
    "M": "111b1515111111", "N": "11191513111111", "O": "0e11111111110e", "P": "1e11111e101010",
    "Q": "0e111111151209", "R": "1e11111e141211", "S": "0f10100e01011e", "T": "1f040404040404",
    "U": "1111111111110e", "V": "11111111110a04", "W": "11111115151b11", "X": "11110a040a1111",
    "Y": "11110a04040404", "Z": "1f01020408101f",
    "0": "0e11131519110e", "1": "040c040404040e", "2": "0e11010204081f",
    "3": "1f02040201110e", "4": "02060a121f0202", "5": "1f101e0101110e", "6": "0608101e11110e",
    "7": "1f010204080808", "8": "0e11110e11110e", "9": "0e11110f01020c",
    " ": "00000000000000", ".": "0000000000000c", ",": "00000000000c08", "/": "01010204081010",
    "-": "0000001f000000", "(": "02040808080402", ")": "08040202020408", ":": "000c0c000c0c00",
    "=": "00001f001f0000", "%": "18190204081303", "<": "02040810080402", ">": "08040201020408",
    "+": "0004041f040400", "_": "0000000000001f",
}


def _glyph_rows(ch: str) -> list[int]:
    code = _FONT.get(ch.upper(), _FONT[" "])
    return [int(code[i : i + 2], 16) for i in range(0, 14, 2)]


class Canvas:
    __slots__ = ("height", "pix", "width")

    def __init__(self, width: int, height: int, bg: RGB = (255, 255, 255)) -> None:
        self.width, self.height = width, height
        self.pix = bytearray(bytes(bg) * (width * height))

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: RGB) -> None:
        x0, x1 = max(0, min(x0, x1)), min(self.width, max(x0, x1))
        y0, y1 = max(0, min(y0, y1)), min(self.height, max(y0, y1))
        if x1 <= x0:
            return
        row = bytes(color) * (x1 - x0)
        for y in range(y0, y1):
            start = (y * self.width + x0) * 3
            self.pix[start : start + len(row)] = row

    def text(self, x: int, y: int, s: str, color: RGB = (0, 0, 0), scale: int = 2) -> int:
        """Draw *s* with its top-left at (x, y); return the x after the last glyph."""
        for ch in s:
            for r, bits in enumerate(_glyph_rows(ch)):
                for c in range(5):
                    if bits & (0x10 >> c):
                        self.rect(x + c * scale, y + r * scale, x + (c + 1) * scale, y + (r + 1) * scale, color)
            x += 6 * scale
        return x

    def png(self) -> bytes:
        stride = self.width * 3
        raw = b"".join(b"\x00" + bytes(self.pix[y * stride : (y + 1) * stride]) for y in range(self.height))

        def chunk(tag: bytes, data: bytes) -> bytes:
            return struct.pack("!I", len(data)) + tag + data + struct.pack("!I", zlib.crc32(tag + data))

        ihdr = struct.pack("!IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)  # 8-bit RGB
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def ratio_chart(
    title: str, rows: Sequence[tuple[str, Sequence[float | None]]], series: Sequence[tuple[str, RGB]],
    marks: Sequence[float] = (1.0,), scale_max: float | None = None,
) -> bytes:
    """Horizontal grouped bars of ratios (one group per row, one bar per series)."""
    label_w, bar_h, gap, left, top = 300, 14, 12, 10, 60
    values = [v for _, vs in rows for v in vs if v is not None]
    vmax = scale_max or max([1.5, *values]) * 1.1
    plot_w = 520
    height = top + len(rows) * (bar_h * len(series) + gap) + 40
    cv = Canvas(left + label_w + plot_w + 80, height)
    cv.text(left, 12, title, scale=2)
    x = left
    for name, color in series:
        cv.rect(x, 38, x + 14, 50, color)
        x = cv.text(x + 20, 38, name, scale=2) + 20
    x0 = left + label_w
    y = top
    for label, vs in rows:
        cv.text(left, y + (bar_h * len(series) - 14) // 2, label[:24], scale=2)
        for (_name, color), v in zip(series, vs, strict=True):
            if v is not None:
                w = int(min(v, vmax) / vmax * plot_w)
                cv.rect(x0, y, x0 + max(w, 1), y + bar_h - 2, color)
                cv.text(x0 + w + 4, y + 1, f"{v:.2f}", scale=1)
            y += bar_h
        y += gap
    for m in marks:
        mx = x0 + int(m / vmax * plot_w)
        cv.rect(mx, top - 6, mx + 1, y, (90, 90, 90))
        cv.text(mx - 6, y + 4, f"{m:g}", scale=1)
    cv.rect(x0, top - 6, x0 + 1, y, (0, 0, 0))
    return cv.png()
