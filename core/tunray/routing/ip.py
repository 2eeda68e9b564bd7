"""IP matching with Xray's rule syntax: CIDRs, ``geoip:``, ``ext:`` and ``!`` negation.

Theory of operation
-------------------
Each entry is parsed into (source, reverse): leading ``!`` toggle *reverse* (so
``!!x`` is plain ``x``), and a code may carry its own ``!`` (``geoip:!cn``), XORed in.
As in Xray, entries are pooled into at most four sets -- plain CIDRs, reversed CIDRs,
plain geo codes, reversed geo codes -- and an address matches when any set says so.

A set keeps, per family, its CIDRs merged into disjoint sorted ``[start, end]``
integer ranges; a lookup is one :func:`bisect.bisect_right` over the starts.  A set
answers ``contains != reverse`` -- except that a family with no ranges at all answers
False even when reversed (``!8.8.8.8/32`` does not match any IPv6 address), which is
Xray's rule.  IPv4-mapped IPv6 addresses are matched as IPv4, like Go's netip unmap.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from tunray.config.errors import ConfigError, join
from tunray.net.address import IPAddress
from tunray.routing import geodata

if TYPE_CHECKING:
    from tunray.routing.geodata import GeoAssets

#: Xray's ``GetPrivateIPMatcher`` list (also ``geoip:private`` when no file is found).
PRIVATE_CIDRS = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/3",
    "::/127",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
)


def _merge(ranges: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    ranges.sort()
    starts: list[int] = []
    ends: list[int] = []
    for lo, hi in ranges:
        if ends and lo <= ends[-1] + 1:
            if hi > ends[-1]:
                ends[-1] = hi
        else:
            starts.append(lo)
            ends.append(hi)
    return starts, ends


class IPSet:
    """Disjoint sorted ranges per family, with Xray's reverse rule."""

    __slots__ = ("e4", "e6", "reverse", "s4", "s6")

    def __init__(self, v4: list[tuple[int, int]], v6: list[tuple[int, int]], reverse: bool = False) -> None:
        self.s4, self.e4 = _merge(v4)
        self.s6, self.e6 = _merge(v6)
        self.reverse = reverse

    def contains4(self, n: int) -> bool:
        starts = self.s4
        if not starts:
            return False
        i = bisect_right(starts, n) - 1
        return (i >= 0 and n <= self.e4[i]) != self.reverse

    def contains6(self, n: int) -> bool:
        starts = self.s6
        if not starts:
            return False
        i = bisect_right(starts, n) - 1
        return (i >= 0 and n <= self.e6[i]) != self.reverse

    def inverted(self) -> IPSet:
        new = IPSet.__new__(IPSet)
        new.s4, new.e4, new.s6, new.e6 = self.s4, self.e4, self.s6, self.e6
        new.reverse = not self.reverse
        return new

    def __len__(self) -> int:
        return len(self.s4) + len(self.s6)


def _add_cidr(v4: list[tuple[int, int]], v6: list[tuple[int, int]], packed: bytes, prefix: int) -> None:
    if len(packed) == 4:
        if prefix > 32:
            raise ValueError(f"prefix /{prefix} exceeds 32")
        n = int.from_bytes(packed, "big")
        host = (1 << (32 - prefix)) - 1
        v4.append((n & ~host, n | host))
    elif len(packed) == 16:
        if prefix > 128:
            raise ValueError(f"prefix /{prefix} exceeds 128")
        n = int.from_bytes(packed, "big")
        if n >> 32 == 0xFFFF and prefix >= 96:  # IPv4-mapped: match as IPv4
            _add_cidr(v4, v6, packed[12:], prefix - 96)
            return
        host = (1 << (128 - prefix)) - 1
        v6.append((n & ~host, n | host))
    else:
        raise ValueError(f"bad address length {len(packed)}")


def parse_cidr(text: str) -> tuple[bytes, int]:
    """``"10.0.0.0/8"``, ``"1.2.3.4"`` (/32), ``"fe80::"`` (/128) -> (packed network, prefix)."""
    addr, _, prefix_text = text.partition("/")
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise ValueError(f"{addr!r} is not an IP address") from None
    max_prefix = 32 if ip.version == 4 else 128
    prefix = max_prefix
    if prefix_text:
        if not prefix_text.isdigit():
            raise ValueError(f"invalid prefix length {prefix_text!r}")
        prefix = int(prefix_text)
        if prefix > max_prefix:
            raise ValueError(f"prefix length {prefix} exceeds {max_prefix}")
    return ip.packed, prefix


def cut_reverse(text: str) -> tuple[str, bool]:
    stripped = text.lstrip("!")
    return stripped, (len(text) - len(stripped)) % 2 == 1


class IPMatcher:
    """Matches an address against compiled Xray IP rules (OR over entries)."""

    __slots__ = ("_sets",)

    def __init__(self, sets: Sequence[IPSet]) -> None:
        self._sets = tuple(s for s in sets if len(s))

    @classmethod
    def compile(cls, entries: Sequence[str], path: str, *, assets: GeoAssets | None = None) -> IPMatcher:
        """Compile Xray IP rules; a bad entry raises :class:`ConfigError` naming ``path[i]``."""
        if isinstance(entries, str) or not isinstance(entries, (list, tuple)):
            raise ConfigError(path, "expected an array of IP rules")
        groups: dict[tuple[bool, bool], tuple[list[tuple[int, int]], list[tuple[int, int]]]] = {}
        for i, entry in enumerate(entries):
            where = join(path, i)
            if not isinstance(entry, str):
                raise ConfigError(where, "expected an IP rule string (CIDR, IP or geoip:CODE)")
            try:
                is_geo, reverse, cidrs = _parse_entry(entry, assets)
                v4, v6 = groups.setdefault((is_geo, reverse), ([], []))
                for packed, prefix in cidrs:
                    _add_cidr(v4, v6, packed, prefix)
            except (ValueError, geodata.GeoDataError) as exc:
                raise ConfigError(where, f"invalid IP rule {entry!r}: {exc}") from None
        return cls([IPSet(v4, v6, reverse) for (_, reverse), (v4, v6) in groups.items()])

    @classmethod
    def from_cidrs(cls, cidrs: Iterable[str], *, reverse: bool = False) -> IPMatcher:
        v4: list[tuple[int, int]] = []
        v6: list[tuple[int, int]] = []
        for text in cidrs:
            _add_cidr(v4, v6, *parse_cidr(text))
        return cls([IPSet(v4, v6, reverse)])

    @classmethod
    def private(cls) -> IPMatcher:
        return cls.from_cidrs(PRIVATE_CIDRS)

    def inverted(self) -> IPMatcher:
        """The same sets with every reverse flag toggled (Xray's ``ToggleReverse``)."""
        return IPMatcher([s.inverted() for s in self._sets])

    def match(self, ip: IPAddress | str) -> bool:
        kind = type(ip)
        if kind is str:
            try:
                ip = ipaddress.ip_address(ip)
            except ValueError:
                return False
            kind = type(ip)
        n = int(ip)
        if kind is not ipaddress.IPv4Address:
            if n >> 32 != 0xFFFF:
                for s in self._sets:
                    if s.contains6(n):
                        return True
                return False
            n &= 0xFFFFFFFF  # IPv4-mapped
        for s in self._sets:
            # contains4, inlined: this is the per-flow hot path
            starts = s.s4
            if starts:
                i = bisect_right(starts, n) - 1
                if (i >= 0 and n <= s.e4[i]) != s.reverse:
                    return True
        return False

    __call__ = match

    def any_match(self, ips: Iterable[IPAddress]) -> bool:
        return any(self.match(ip) for ip in ips)

    def __len__(self) -> int:
        return sum(len(s) for s in self._sets)

    def __repr__(self) -> str:
        return f"<IPMatcher {len(self)} ranges in {len(self._sets)} set(s)>"


def _parse_entry(entry: str, assets: GeoAssets | None) -> tuple[bool, bool, list[tuple[bytes, int]]]:
    text, reverse = cut_reverse(entry)
    if text.startswith("geoip:"):
        text = "ext:geoip.dat:" + text[len("geoip:") :]
    for ext in ("ext:", "ext-ip:"):
        if text.startswith(ext):
            file, sep, code = text[len(ext) :].partition(":")
            if not sep:
                raise ValueError("expected FILE:CODE")
            if not file:
                raise ValueError("empty file name")
            code, code_reverse = cut_reverse(code)
            if not code:
                raise ValueError("empty code")
            reverse ^= code_reverse
            try:
                cidrs = (assets or geodata.GeoAssets()).geoip(file, code)
            except geodata.GeoDataError:
                if code.upper() != "PRIVATE":
                    raise
                cidrs = [parse_cidr(c) for c in PRIVATE_CIDRS]
            return True, reverse, cidrs
    return False, reverse, [parse_cidr(text)]
