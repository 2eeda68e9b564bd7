"""Xray port lists: ``443``, ``"53, 443, 1000-2000"``, ``[80, "8000-9000"]``, ``"env:VAR"``."""

from __future__ import annotations

import os
from bisect import bisect_right
from typing import Any

from tunray.config.errors import ConfigError, join


def _port(text: str, path: str) -> int:
    text = text.strip()
    if not text.isdigit():
        raise ConfigError(path, f"invalid port {text!r} (expected 0-65535)")
    value = int(text)
    if value > 65535:
        raise ConfigError(path, f"port {value} is above 65535")
    return value


def _parse_part(text: str, path: str) -> tuple[int, int]:
    text = text.strip()
    if text.startswith("env:"):
        name = text[4:]
        value = os.environ.get(name)
        if value is None:
            raise ConfigError(path, f"environment variable {name!r} is not set")
        text = value.strip()
    lo_text, dash, hi_text = text.partition("-")
    lo = _port(lo_text, path)
    hi = _port(hi_text, path) if dash else lo
    if lo > hi:
        raise ConfigError(path, f"port range {text!r} is reversed")
    return lo, hi


class PortList:
    """Sorted, merged port ranges; ``port in portlist`` is a bisect."""

    __slots__ = ("ends", "starts")

    def __init__(self, ranges: list[tuple[int, int]]) -> None:
        ranges = sorted(ranges)
        self.starts: list[int] = []
        self.ends: list[int] = []
        for lo, hi in ranges:
            if self.ends and lo <= self.ends[-1] + 1:
                self.ends[-1] = max(self.ends[-1], hi)
            else:
                self.starts.append(lo)
                self.ends.append(hi)

    @classmethod
    def parse(cls, raw: Any, path: str) -> PortList:
        """Parse a JSON port list; raise :class:`ConfigError` naming *path*."""
        ranges: list[tuple[int, int]] = []
        items = raw if isinstance(raw, list) else [raw]
        for i, item in enumerate(items):
            where = join(path, i) if isinstance(raw, list) else path
            if isinstance(item, bool):
                raise ConfigError(where, 'expected a port number or a string like "53, 1000-2000"')
            if isinstance(item, int):
                if not 0 <= item <= 65535:
                    raise ConfigError(where, f"port {item} is out of range 0-65535")
                ranges.append((item, item))
            elif isinstance(item, str):
                for part in item.split(","):
                    if part.strip():
                        # an env value may itself be a list: "env:PORTS" with PORTS="80,443"
                        if part.strip().startswith("env:"):
                            value = os.environ.get(part.strip()[4:])
                            if value is not None and "," in value:
                                ranges.extend(cls.parse(value, where).ranges())
                                continue
                        ranges.append(_parse_part(part, where))
            else:
                raise ConfigError(where, 'expected a port number or a string like "53, 1000-2000"')
        if not ranges:
            raise ConfigError(path, "empty port list")
        return cls(ranges)

    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self.starts, self.ends, strict=True))

    def __contains__(self, port: int) -> bool:
        i = bisect_right(self.starts, port) - 1
        return i >= 0 and port <= self.ends[i]

    def __repr__(self) -> str:
        return "PortList(" + ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in self.ranges()) + ")"
