"""Sans-IO DNS messages (RFC 1035): build A/AAAA queries, parse responses, follow CNAMEs.

Wire layout (RFC 1035 4.1)::

    header   ID(16) | QR(1) OPCODE(4) AA TC RD RA Z(3) RCODE(4) | QDCOUNT ANCOUNT NSCOUNT ARCOUNT (16 each)
    question QNAME (labels) | QTYPE(16) | QCLASS(16)
    record   NAME | TYPE(16) | CLASS(16) | TTL(32) | RDLENGTH(16) | RDATA

A name is a run of length-prefixed labels ending in a zero byte, or ending in a
two-byte pointer ``11xxxxxx xxxxxxxx`` to an earlier name (4.1.4).  The parser only
follows pointers that go backwards, so a hostile message cannot loop it; malformed
input raises :class:`DNSFormatError`.  The module also builds responses (with a
pointer to the question name), which tests use to run a real responder.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

A, NS, CNAME, SOA, MX, TXT, AAAA = 1, 2, 5, 6, 15, 16, 28
CLASS_IN = 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
FLAG_QR, FLAG_AA, FLAG_TC, FLAG_RD, FLAG_RA = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080

_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")

RData = ipaddress.IPv4Address | ipaddress.IPv6Address | str | int | bytes


class DNSFormatError(ValueError):
    """A DNS message that cannot be parsed."""


@dataclass(frozen=True, slots=True)
class Question:
    name: str
    qtype: int
    qclass: int = CLASS_IN


@dataclass(frozen=True, slots=True)
class Record:
    """``data`` is an IP for A/AAAA, the target name for CNAME/NS, the negative-cache TTL
    (``min(ttl, MINIMUM)``) for SOA, raw bytes otherwise."""

    name: str
    rtype: int
    ttl: int
    data: RData
    rclass: int = CLASS_IN


@dataclass(slots=True)
class Message:
    id: int
    flags: int
    questions: list[Question] = field(default_factory=list)
    answers: list[Record] = field(default_factory=list)
    authority: list[Record] = field(default_factory=list)
    additional: list[Record] = field(default_factory=list)

    @property
    def rcode(self) -> int:
        return self.flags & 0xF

    @property
    def is_response(self) -> bool:
        return bool(self.flags & FLAG_QR)

    @property
    def truncated(self) -> bool:
        return bool(self.flags & FLAG_TC)


def encode_name(name: str) -> bytes:
    name = name.rstrip(".")
    if not name:
        return b"\x00"
    out = bytearray()
    for label in name.split("."):
        raw = label.encode("idna") if not label.isascii() else label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad label {label!r} in {name!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > 255:
        raise ValueError(f"name too long: {name!r}")
    return bytes(out)


def build_query(qid: int, name: str, qtype: int, *, recursion: bool = True) -> bytes:
    header = _HEADER.pack(qid, FLAG_RD if recursion else 0, 1, 0, 0, 0)
    return header + encode_name(name) + struct.pack("!HH", qtype, CLASS_IN)


def _read_name(data: bytes, pos: int) -> tuple[str, int]:
    """Decode the name at *pos*; return it and the position after it (not after pointers)."""
    labels: list[str] = []
    end = -1
    limit = pos
    total = 0
    while True:
        if pos >= len(data):
            raise DNSFormatError("name runs past the end")
        n = data[pos]
        if n == 0:
            pos += 1
            break
        if n & 0xC0 == 0xC0:
            if pos + 1 >= len(data):
                raise DNSFormatError("truncated compression pointer")
            target = ((n & 0x3F) << 8) | data[pos + 1]
            if end < 0:
                end = pos + 2
            if target >= limit:
                raise DNSFormatError("compression pointer does not point backwards")
            pos = limit = target
            continue
        if n & 0xC0:
            raise DNSFormatError("unsupported label type")
        label = data[pos + 1 : pos + 1 + n]
        if len(label) != n:
            raise DNSFormatError("truncated label")
        total += n + 1
        if total > 255:
            raise DNSFormatError("name too long")
        labels.append(label.decode("ascii", "replace"))
        pos += 1 + n
    return ".".join(labels).lower(), (end if end >= 0 else pos)


def _read_record(data: bytes, pos: int) -> tuple[Record, int]:
    name, pos = _read_name(data, pos)
    if pos + _RR.size > len(data):
        raise DNSFormatError("truncated record header")
    rtype, rclass, ttl, rdlen = _RR.unpack_from(data, pos)
    pos += _RR.size
    rdata = data[pos : pos + rdlen]
    if len(rdata) != rdlen:
        raise DNSFormatError("truncated record data")
    value: RData = rdata
    if rtype == A and rdlen == 4:
        value = ipaddress.IPv4Address(rdata)
    elif rtype == AAAA and rdlen == 16:
        value = ipaddress.IPv6Address(rdata)
    elif rtype in (CNAME, NS):
        value, _ = _read_name(data, pos)
    elif rtype == SOA:
        _, p = _read_name(data, pos)  # MNAME
        _, p = _read_name(data, p)  # RNAME
        if p + 20 > pos + rdlen:
            raise DNSFormatError("truncated SOA")
        minimum = struct.unpack_from("!I", data, p + 16)[0]
        value = min(ttl, minimum)
    return Record(name, rtype, ttl, value, rclass), pos + rdlen


def parse_message(data: bytes) -> Message:
    if len(data) < _HEADER.size:
        raise DNSFormatError("shorter than a DNS header")
    qid, flags, qd, an, ns, ar = _HEADER.unpack_from(data)
    msg = Message(qid, flags)
    pos = _HEADER.size
    for _ in range(qd):
        name, pos = _read_name(data, pos)
        if pos + 4 > len(data):
            raise DNSFormatError("truncated question")
        qtype, qclass = struct.unpack_from("!HH", data, pos)
        pos += 4
        msg.questions.append(Question(name, qtype, qclass))
    for count, section in ((an, msg.answers), (ns, msg.authority), (ar, msg.additional)):
        for _ in range(count):
            record, pos = _read_record(data, pos)
            section.append(record)
    return msg


def build_response(
    query: Message,
    answers: Sequence[Record] = (),
    *,
    rcode: int = NOERROR,
    authority: Sequence[Record] = (),
    authoritative: bool = False,
) -> bytes:
    """A response to *query*; names equal to the question name are compressed to a pointer."""
    qname = query.questions[0].name if query.questions else ""
    flags = FLAG_QR | FLAG_RA | (query.flags & FLAG_RD) | (rcode & 0xF) | (FLAG_AA if authoritative else 0)
    out = bytearray(_HEADER.pack(query.id, flags, len(query.questions), len(answers), len(authority), 0))
    for q in query.questions:
        out += encode_name(q.name) + struct.pack("!HH", q.qtype, q.qclass)

    def name_bytes(name: str) -> bytes:
        return b"\xc0\x0c" if qname and name.lower() == qname else encode_name(name)

    for record in (*answers, *authority):
        if isinstance(record.data, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            rdata = record.data.packed
        elif record.rtype in (CNAME, NS) and isinstance(record.data, str):
            rdata = name_bytes(record.data)
        elif record.rtype == SOA and isinstance(record.data, int):
            rdata = encode_name("ns." + record.name) + encode_name("admin." + record.name)
            rdata += struct.pack("!IIIII", 1, 3600, 600, 86400, record.data)
        elif isinstance(record.data, bytes):
            rdata = record.data
        else:
            raise ValueError(f"cannot encode {record!r}")
        out += name_bytes(record.name) + _RR.pack(record.rtype, record.rclass, record.ttl, len(rdata)) + rdata
    return bytes(out)


def addresses(
    msg: Message, name: str, qtype: int
) -> tuple[list[ipaddress.IPv4Address | ipaddress.IPv6Address], int]:
    """The *qtype* addresses of *name* in *msg*, following CNAMEs; and the TTL to cache them.

    With no address the TTL is the negative-caching one from an SOA in the authority
    section (RFC 2308), or -1 when the answer should not be cached.
    """
    name = name.lower().rstrip(".")
    chain = {name}
    ttl: int | None = None
    changed = True
    for _ in range(16):  # CNAME chains longer than this are treated as broken
        if not changed:
            break
        changed = False
        for r in msg.answers:
            if r.rtype == CNAME and r.name in chain and isinstance(r.data, str) and r.data not in chain:
                chain.add(r.data)
                ttl = r.ttl if ttl is None else min(ttl, r.ttl)
                changed = True
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for r in msg.answers:
        if (
            r.rtype == qtype
            and r.name in chain
            and isinstance(r.data, (ipaddress.IPv4Address, ipaddress.IPv6Address))
        ):
            if r.data not in ips:
                ips.append(r.data)
            ttl = r.ttl if ttl is None else min(ttl, r.ttl)
    if ips:
        return ips, ttl if ttl is not None else 0
    for r in msg.authority:
        if r.rtype == SOA and isinstance(r.data, int):
            return [], r.data
    return [], -1
