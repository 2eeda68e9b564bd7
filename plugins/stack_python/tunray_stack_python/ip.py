"""IPv4/IPv6 headers and the virtio-net header, parsed and built.

Parsing returns plain tuples (no object per packet) or a drop reason string; the
caller counts drops.  Layouts:

``virtio_net_hdr`` (10 bytes, little-endian with TUN's default ``IFF_VNET_LE`` off on x86)::

    u8 flags (NEEDS_CSUM=1, DATA_VALID=2) | u8 gso_type (NONE=0, TCPV4=1, UDP=3, TCPV6=4, ECN=0x80)
    u16 hdr_len | u16 gso_size | u16 csum_start | u16 csum_offset

IPv4 (RFC 791)::

    0      |4     |8            |16  |19              |31
    version| IHL  | TOS         | total length
    identification              |flags| fragment offset
    TTL           | protocol    | header checksum
    source address / destination address / options

IPv6 (RFC 8200): version/class/flow (4 bytes), payload length (2), next header (1),
hop limit (1), source (16), destination (16); extension headers chain by next header.
"""

from __future__ import annotations

import struct

from tunray_stack_python.checksum import finish, sum_of

VNET_LEN = 10
VNET_F_NEEDS_CSUM = 1
VNET_F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
_V6_SKIP = frozenset((0, 43, 60))  # hop-by-hop, routing, destination options
_V6_FRAGMENT = 44

DEFAULT_TTL = 64

_VNET = struct.Struct("<BBHHHH")
_V4 = struct.Struct("!BBHHHBBH4s4s")
_V6 = struct.Struct("!IHBB16s16s")
_FROM = int.from_bytes

# (version, src, dst, proto, l4_start, l4_end)
Parsed = tuple[int, bytes, bytes, int, int, int]


def vnet_header(flags: int = 0, gso_type: int = GSO_NONE, hdr_len: int = 0, gso_size: int = 0,
                csum_start: int = 0, csum_offset: int = 0) -> bytes:
    return _VNET.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


VNET_NONE = vnet_header()


def parse_vnet(packet: bytes) -> tuple[int, int, int] | None:
    """Return ``(flags, gso_type, gso_size)`` or ``None`` if the packet is too short."""
    if len(packet) < VNET_LEN:
        return None
    flags, gso_type, _hdr_len, gso_size, _start, _off = _VNET.unpack_from(packet, 0)
    return flags, gso_type, gso_size


def parse_ip(packet: bytes, start: int, lenient_length: bool) -> Parsed | str:
    """Parse the IP header at *start*.  *lenient_length* trusts the buffer size (GSO super-packets).

    Returns the tuple or a drop reason.
    """
    size = len(packet) - start
    if size < 20:
        return "ip_truncated"
    first = packet[start]
    version = first >> 4
    if version == 4:
        ihl = (first & 15) * 4
        if ihl < 20 or size < ihl:
            return "ipv4_bad_header"
        total = (packet[start + 2] << 8) | packet[start + 3]
        if lenient_length and (total == 0 or total > size):
            total = size
        if total < ihl or total > size:
            return "ipv4_bad_length"
        if sum_of(memoryview(packet)[start:start + ihl]) != 0:
            return "ipv4_bad_checksum"
        if packet[start + 6] & 0x3F or packet[start + 7]:  # MF flag or fragment offset
            return "ipv4_fragment"
        return (4, packet[start + 12:start + 16], packet[start + 16:start + 20], packet[start + 9],
                start + ihl, start + total)
    if version == 6:
        if size < 40:
            return "ipv6_truncated"
        plen = (packet[start + 4] << 8) | packet[start + 5]
        if lenient_length and (plen == 0 or plen + 40 > size):
            plen = size - 40
        end = start + 40 + plen
        if end > len(packet):
            return "ipv6_bad_length"
        nh = packet[start + 6]
        off = start + 40
        while nh in _V6_SKIP:
            if off + 8 > end:
                return "ipv6_bad_extension"
            nh, hlen = packet[off], (packet[off + 1] + 1) * 8
            off += hlen
            if off > end:
                return "ipv6_bad_extension"
        if nh == _V6_FRAGMENT:
            return "ipv6_fragment"
        return (6, packet[start + 8:start + 24], packet[start + 24:start + 40], nh, off, end)
    return "ip_bad_version"


def v4_base_sum(src: bytes, dst: bytes, proto: int) -> int:
    """The header-checksum sum of an IPv4 header without its total length (see :func:`v4_header`)."""
    return (0x4500 + 0x4000 + (DEFAULT_TTL << 8 | proto) + _FROM(src, "big") + _FROM(dst, "big")) % 0xFFFF


def v4_header(base: int, src: bytes, dst: bytes, proto: int, total: int) -> bytes:
    """A 20-byte IPv4 header, DF set, ID 0, TTL 64; *base* from :func:`v4_base_sum`."""
    return _V4.pack(0x45, 0, total, 0, 0x4000, DEFAULT_TTL, proto, finish(base + total), src, dst)


def v6_header(src: bytes, dst: bytes, proto: int, payload_len: int) -> bytes:
    """A 40-byte IPv6 header, hop limit 64; *payload_len* above 65535 is written as 0 (jumbo-less GSO)."""
    return _V6.pack(0x60000000, payload_len if payload_len <= 0xFFFF else 0, proto, DEFAULT_TTL, src, dst)


def ip_header(version: int, src: bytes, dst: bytes, proto: int, l4_len: int) -> bytes:
    """Convenience builder for rarely sent packets (RSTs, ICMP, UDP)."""
    if version == 4:
        return v4_header(v4_base_sum(src, dst, proto), src, dst, proto, 20 + l4_len)
    return v6_header(src, dst, proto, l4_len)
