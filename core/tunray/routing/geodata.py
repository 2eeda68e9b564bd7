"""Reading Xray's ``geoip.dat`` / ``geosite.dat`` without a protobuf dependency.

Theory of operation
-------------------
Both files are one protobuf message holding a ``repeated`` field 1 of entries::

    GeoIPList   { repeated GeoIP   entry = 1; }   GeoIP   { string code = 1; repeated CIDR cidr = 2; bool reverse_match = 3; }
    GeoSiteList { repeated GeoSite entry = 1; }   GeoSite { string code = 1; repeated Domain domain = 2; }
    CIDR   { bytes ip = 1 (4 or 16 bytes); uint32 prefix = 2; }
    Domain { Type type = 1 (Substr=0, Regex=1, Domain=2, Full=3); string value = 2;
             repeated Attribute attribute = 3; }   Attribute { string key = 1; bool/int64 value = 2/3; }

A file is indexed once (code -> byte range of its entry) by walking the top-level
length-delimited fields and peeking at each entry's first field; only the entries a
config asks for are read and decoded, and decoded entries are cached process-wide
keyed by (path, mtime, size, code), so every :class:`GeoAssets` shares them.

Like current Xray, an entry's ``reverse_match`` flag is ignored: negation is written
in the rule (``geoip:!cn``).  ``geoip:private`` / ``geosite:private`` fall back to the
built-in private lists when no file is found (a tunray convenience; Xray needs the file).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from threading import Lock
from typing import Any

from tunray.net.protobuf import VarintError, decode_varint

ENV_VARS = ("TUNRAY_LOCATION_ASSET", "XRAY_LOCATION_ASSET", "xray.location.asset")
DEFAULT_DIRS = ("/usr/share/xray", "/usr/local/share/xray")

# Domain.Type values.
SUBSTR, REGEX, DOMAIN, FULL = 0, 1, 2, 3


class GeoDataError(Exception):
    """A .dat file is missing, malformed, or lacks the requested code."""


@dataclass(frozen=True, slots=True)
class GeoDomain:
    type: int
    value: str
    attrs: frozenset[str]


def read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Decode a base-128 varint at *pos*; return (value, new position)."""
    try:
        return decode_varint(buf, pos)
    except VarintError as exc:
        raise GeoDataError(str(exc)) from None


def iter_fields(buf: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, Any]]:
    """Yield (field number, wire type, value) for one message; value is int or (start, end)."""
    pos = start
    stop = len(buf) if end is None else end
    while pos < stop:
        key, pos = read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(buf, pos)
            yield field, wire, value
        elif wire == 2:
            length, pos = read_varint(buf, pos)
            if pos + length > stop:
                raise GeoDataError("truncated length-delimited field")
            yield field, wire, (pos, pos + length)
            pos += length
        elif wire == 5:
            pos += 4
        elif wire == 1:
            pos += 8
        else:
            raise GeoDataError(f"unsupported wire type {wire}")
    if pos != stop:
        raise GeoDataError("truncated message")


def _first_code(buf: bytes, start: int, end: int) -> str | None:
    """The entry's ``code`` (field 1), read without decoding the rest."""
    for field, wire, value in iter_fields(buf, start, end):
        if field == 1 and wire == 2:
            s, e = value
            return buf[s:e].decode("utf-8", "replace").upper()
        break  # Xray's writer always puts the code first; so does ours
    return None


def index_file(data: bytes) -> dict[str, tuple[int, int]]:
    """code (upper-cased) -> (start, end) of the entry body; the first duplicate wins."""
    index: dict[str, tuple[int, int]] = {}
    for field, wire, value in iter_fields(data):
        if field != 1 or wire != 2:
            continue
        s, e = value
        code = _first_code(data, s, e)
        if code is not None and code not in index:
            index[code] = (s, e)
    return index


def decode_geoip(entry: bytes) -> list[tuple[bytes, int]]:
    cidrs: list[tuple[bytes, int]] = []
    for field, wire, value in iter_fields(entry):
        if field != 2 or wire != 2:
            continue
        ip = b""
        prefix = 0
        for f2, w2, v2 in iter_fields(entry, value[0], value[1]):
            if f2 == 1 and w2 == 2:
                ip = entry[v2[0] : v2[1]]
            elif f2 == 2 and w2 == 0:
                prefix = v2
        cidrs.append((ip, prefix))
    return cidrs


def decode_geosite(entry: bytes) -> list[GeoDomain]:
    domains: list[GeoDomain] = []
    for field, wire, value in iter_fields(entry):
        if field != 2 or wire != 2:
            continue
        kind = 0
        text = ""
        attrs: list[str] = []
        for f2, w2, v2 in iter_fields(entry, value[0], value[1]):
            if f2 == 1 and w2 == 0:
                kind = v2
            elif f2 == 2 and w2 == 2:
                text = entry[v2[0] : v2[1]].decode("utf-8", "replace")
            elif f2 == 3 and w2 == 2:
                for f3, w3, v3 in iter_fields(entry, v2[0], v2[1]):
                    if f3 == 1 and w3 == 2:
                        attrs.append(entry[v3[0] : v3[1]].decode("utf-8", "replace"))
        domains.append(GeoDomain(kind, text, frozenset(attrs)))
    return domains


class _DatFile:
    __slots__ = ("index", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.index = index_file(path.read_bytes())

    def entry(self, code: str) -> bytes:
        span = self.index.get(code)
        if span is None:
            raise GeoDataError(f"code {code!r} not found in {self.path}")
        with self.path.open("rb") as f:
            f.seek(span[0])
            return f.read(span[1] - span[0])


_lock = Lock()
_files: dict[tuple[str, int, int], _DatFile] = {}
_decoded: dict[tuple[str, int, int, str, str], object] = {}


class GeoAssets:
    """Finds and decodes .dat files; decoded codes are cached process-wide.

    Search order for a bare file name: ``$TUNRAY_LOCATION_ASSET``, ``$XRAY_LOCATION_ASSET``
    (each a directory), then ``/usr/share/xray``, ``/usr/local/share/xray`` and the
    current directory.  An absolute or ``./`` path is used as given.
    """

    __slots__ = ("dirs",)

    def __init__(self, dirs: list[str] | None = None) -> None:
        if dirs is None:
            dirs = [os.environ[v] for v in ENV_VARS if os.environ.get(v)]
            dirs += [*DEFAULT_DIRS, os.getcwd()]
        self.dirs = dirs

    def find(self, name: str) -> Path:
        if os.sep in name:
            p = Path(name)
            if p.is_file():
                return p
            raise GeoDataError(f"{name} not found")
        for d in self.dirs:
            p = Path(d) / name
            if p.is_file():
                return p
        raise GeoDataError(f"{name} not found in {', '.join(self.dirs)} (set TUNRAY_LOCATION_ASSET)")

    def _file(self, name: str) -> tuple[tuple[str, int, int], _DatFile]:
        path = self.find(name)
        st = path.stat()
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
        with _lock:
            dat = _files.get(key)
            if dat is None:
                dat = _files[key] = _DatFile(path)
        return key, dat

    def has_code(self, name: str, code: str) -> bool:
        _, dat = self._file(name)
        return code.upper() in dat.index

    def geoip(self, name: str, code: str) -> list[tuple[bytes, int]]:
        """The CIDRs (ip bytes, prefix) of *code* in geoip file *name*."""
        key, dat = self._file(name)
        ck = (*key, "ip", code.upper())
        cached = _decoded.get(ck)
        if cached is None:
            cached = _decoded[ck] = decode_geoip(dat.entry(code.upper()))
        return cached  # type: ignore[return-value]

    def geosite(self, name: str, code: str) -> list[GeoDomain]:
        """The domain entries of *code* in geosite file *name*."""
        key, dat = self._file(name)
        ck = (*key, "site", code.upper())
        cached = _decoded.get(ck)
        if cached is None:
            cached = _decoded[ck] = decode_geosite(dat.entry(code.upper()))
        return cached  # type: ignore[return-value]


def clear_cache() -> None:
    """Forget every indexed file and decoded code (after the files are replaced)."""
    with _lock:
        _files.clear()
        _decoded.clear()
