"""Writing ``geoip.dat`` / ``geosite.dat`` files (for tests and for users building their own).

The layout is the one :mod:`tunray.routing.geodata` reads (Xray's ``GeoIPList`` and
``GeoSiteList`` protobuf messages), encoded by hand::

    geoip:   {"CN": ["1.2.3.0/24", "2001:db8::/32"], ...}
    geosite: {"CN": ["domain:example.cn", "full:a.b", "keyword:x", "regexp:^y$",
                     ("domain:ads.example", ["ads"])], ...}
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from tunray.net.protobuf import encode_varint
from tunray.routing.geodata import DOMAIN, FULL, REGEX, SUBSTR

_TYPES = {"keyword": SUBSTR, "regexp": REGEX, "domain": DOMAIN, "full": FULL}


varint = encode_varint


def _field_bytes(field: int, data: bytes) -> bytes:
    return varint(field << 3 | 2) + varint(len(data)) + data


def _field_int(field: int, value: int) -> bytes:
    return varint(field << 3) + varint(value)


def encode_geoip(code: str, cidrs: Iterable[str], *, reverse_match: bool = False) -> bytes:
    body = _field_bytes(1, code.encode())
    for text in cidrs:
        net = ipaddress.ip_network(text, strict=False)
        body += _field_bytes(2, _field_bytes(1, net.network_address.packed) + _field_int(2, net.prefixlen))
    if reverse_match:
        body += _field_int(3, 1)
    return body


def encode_domain(kind: int, value: str, attrs: Sequence[str] = ()) -> bytes:
    body = (_field_int(1, kind) if kind else b"") + _field_bytes(2, value.encode())
    for key in attrs:
        body += _field_bytes(3, _field_bytes(1, key.encode()) + _field_int(2, 1))
    return body


def encode_geosite(code: str, domains: Iterable[str | tuple[str, Sequence[str]]]) -> bytes:
    body = _field_bytes(1, code.encode())
    for item in domains:
        text, attrs = (item, ()) if isinstance(item, str) else item
        prefix, sep, rest = text.partition(":")
        if sep and prefix in _TYPES:
            kind, value = _TYPES[prefix], rest
        else:
            kind, value = SUBSTR, text
        body += _field_bytes(2, encode_domain(kind, value, attrs))
    return body


def geoip_bytes(entries: Mapping[str, Iterable[str]]) -> bytes:
    return b"".join(_field_bytes(1, encode_geoip(code, cidrs)) for code, cidrs in entries.items())


def geosite_bytes(entries: Mapping[str, Iterable[str | tuple[str, Sequence[str]]]]) -> bytes:
    return b"".join(_field_bytes(1, encode_geosite(code, doms)) for code, doms in entries.items())


def write_geoip(path: str | Path, entries: Mapping[str, Iterable[str]]) -> None:
    Path(path).write_bytes(geoip_bytes(entries))


def write_geosite(path: str | Path, entries: Mapping[str, Iterable[str | tuple[str, Sequence[str]]]]) -> None:
    Path(path).write_bytes(geosite_bytes(entries))
