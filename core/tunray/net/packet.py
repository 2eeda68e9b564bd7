"""IP packets for stacks: checksums, IPv4/IPv6 and virtio-net headers, UDP, ICMP echo, GSO.

Shared by every stack core (the Python stack, lwIP's glue, the system stack's NAT), so
none keeps a private copy.  Parsing returns plain tuples (no object per packet) or a drop
reason string the caller counts; nothing here raises on bad input.

Checksums (RFC 1071) without a per-byte Python loop.  The one's-complement sum of 16-bit
big-endian words is congruent to the whole buffer read as one big-endian integer modulo
``0xFFFF`` (``2**16 == 1 (mod 0xFFFF)``), and ``int.from_bytes`` plus a modulo by a
one-digit divisor run in C: 64 KiB cost tens of microseconds.  Sums are plain ints
"modulo 0xFFFF", added freely; only :func:`finish` turns one into a header field.  An
odd-length buffer is padded with a zero byte (a shift by 8).  A buffer must start on an
even offset of the checksummed region, as every IP and transport header does.

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

UDP (RFC 768): source port, destination port, length, checksum (16 bits each).
ICMPv4 echo (RFC 792): type 8 request / 0 reply; ICMPv6 (RFC 4443): 128 / 129, with the
IPv6 pseudo-header (next header 58) in the checksum.
"""

from __future__ import annotations

import struct

_FROM = int.from_bytes

# --- checksums ------------------------------------------------------------------------------------


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


def update(checksum: int, old: bytes | int, new: bytes | int) -> int:
    """RFC 1624 incremental update: the checksum field after *old* became *new*.

    ``HC' = ~(~HC + ~m + m')`` (eqn. 3), for a 16-bit word (ints) or any even-length run
    of bytes (an address, a port pair) at an even offset.  What NAT does to a header
    without summing the payload again.
    """
    m = old if isinstance(old, int) else sum_of(old)
    m2 = new if isinstance(new, int) else sum_of(new)
    return finish((0xFFFF - checksum) + (0xFFFF - m % 0xFFFF) + m2)


# --- IP and virtio-net headers ---------------------------------------------------------------------

VNET_LEN = 10
VNET_F_NEEDS_CSUM = 1
VNET_F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_ECN = 0x80

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
_H = struct.Struct("!H")
_I = struct.Struct("!I")
UDP_HEADER = struct.Struct("!HHHH")

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


# --- UDP and ICMP echo ----------------------------------------------------------------------------


def build_udp(version: int, src: bytes, sport: int, dst: bytes, dport: int, payload: bytes,
              vnet: bool) -> bytes:
    """A complete UDP packet (with a virtio header, checksum left to the kernel, when *vnet*)."""
    length = 8 + len(payload)
    pseudo = pseudo_sum(src, dst, PROTO_UDP, length)
    if vnet:
        head = UDP_HEADER.pack(sport, dport, length, partial(pseudo))
        iplen = 20 if version == 4 else 40
        prefix = vnet_header(VNET_F_NEEDS_CSUM, 0, 0, 0, iplen, 6)
    else:
        head = UDP_HEADER.pack(sport, dport, length, 0)
        head = UDP_HEADER.pack(sport, dport, length, finish(pseudo + sum_of(head) + sum_of(payload)))
        prefix = b""
    return b"".join((prefix, ip_header(version, src, dst, PROTO_UDP, length), head, payload))


def parse_udp(version: int, src: bytes, dst: bytes, packet: bytes, l4: int, end: int,
              csum_ok: bool) -> tuple[int, int, int] | str:
    """Check the UDP datagram at *l4*: ``(sport, dport, payload_end)`` or a drop reason.

    *csum_ok*: the device vouched for the checksum (virtio flags).  A zero checksum means
    "none" over IPv4 and is illegal over IPv6 (RFC 8200 8.1).
    """
    if end - l4 < 8:
        return "udp_truncated"
    sport, dport, length, csum = UDP_HEADER.unpack_from(packet, l4)
    if length < 8 or l4 + length > end:
        return "udp_bad_length"
    end = l4 + length
    if not csum_ok:
        if csum == 0:
            if version == 6:
                return "udp_bad_checksum"
        elif not valid(pseudo_sum(src, dst, PROTO_UDP, length) + sum_of(memoryview(packet)[l4:end])):
            return "udp_bad_checksum"
    return sport, dport, end


ECHO_REQUEST_V4, ECHO_REPLY_V4 = 8, 0
ECHO_REQUEST_V6, ECHO_REPLY_V6 = 128, 129


def echo_reply(version: int, src: bytes, dst: bytes, message: bytes, vnet: bool) -> bytes | str:
    """The reply to the ICMP *message* sent from *src* to *dst*, or a drop reason.

    Echo requests to any address get a local reply; nothing is proxied (as in Xray).
    """
    if len(message) < 8:
        return "icmp_truncated"
    if version == 4:
        if not valid(sum_of(message)):
            return "icmp_bad_checksum"
        if message[0] != ECHO_REQUEST_V4:
            return "icmp_ignored"
        reply_type, proto, pseudo = ECHO_REPLY_V4, PROTO_ICMP, 0
    else:
        if not valid(pseudo_sum(src, dst, PROTO_ICMPV6, len(message)) + sum_of(message)):
            return "icmp_bad_checksum"
        if message[0] != ECHO_REQUEST_V6:
            return "icmp_ignored"
        reply_type, proto = ECHO_REPLY_V6, PROTO_ICMPV6
        pseudo = pseudo_sum(dst, src, PROTO_ICMPV6, len(message))
    if message[1] != 0:
        return "icmp_ignored"
    body = message[4:]
    head = bytes((reply_type, 0))
    csum = finish(pseudo + sum_of(head + b"\0\0" + body))
    reply = head + csum.to_bytes(2, "big") + body
    prefix = vnet_header() if vnet else b""
    return prefix + ip_header(version, dst, src, proto, len(reply)) + reply


# --- GSO ------------------------------------------------------------------------------------------

# --- TCP flags every stack refuses ----------------------------------------------------------------

TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10


def _bad_flags(flags: int) -> bool:
    syn = flags & TCP_SYN
    return bool(syn and flags & (TCP_FIN | TCP_RST)) or not flags & (TCP_SYN | TCP_ACK | TCP_RST)


#: Indexed by a TCP header's flags byte (offset 13): 1 for a combination no stack accepts, so every
#: stack drops it (counted ``tcp_bad_flags``) before it can open a connection or reach a state
#: machine.  SYN with FIN or RST (FreeBSD drops SYN+FIN always, Linux in LISTEN; RFC 9293 3.10.7
#: gives a SYN no meaning beside RST), and a segment with none of SYN, ACK, RST: the null and
#: FIN/PSH/URG-only "scans", FIN without ACK (every segment after the SYN carries ACK, RFC 9293
#: 3.10.7.4; Linux discards the rest in ``tcp_validate_incoming``).
BAD_TCP_FLAGS = bytes(_bad_flags(f) for f in range(256))

_TCP_FIN_PSH = 0x09
_TCP_CWR = 0x80


def gso_split(packet: bytes) -> list[bytes] | str:
    """Cut one packet read with a virtio-net header into plain IP packets with full checksums.

    A TCP super-packet (``GSO_TCPV4``/``GSO_TCPV6``) becomes segments of ``gso_size``
    payload bytes: sequence numbers advance, FIN and PSH stay on the last segment, CWR on
    the first, IPv4 IDs count up.  A UDP one (``GSO_UDP``, USO) becomes datagrams of
    ``gso_size``.  A packet without GSO comes back alone, its checksum completed when the
    kernel left it partial (``NEEDS_CSUM``).  For stacks that want MTU-sized packets
    from an offloading TUN; returns a drop reason for what cannot be cut.
    """
    vnet = parse_vnet(packet)
    if vnet is None:
        return "vnet_truncated"
    flags, gso_type, gso_size = vnet
    gso_type &= ~GSO_ECN
    parsed = parse_ip(packet, VNET_LEN, gso_type != GSO_NONE)
    if isinstance(parsed, str):
        return parsed
    version, src, dst, proto, l4, end = parsed
    view = memoryview(packet)
    if gso_type == GSO_NONE or gso_size == 0:
        if not flags & VNET_F_NEEDS_CSUM or proto not in (PROTO_TCP, PROTO_UDP):
            return [bytes(view[VNET_LEN:end])]
        l4len = end - l4
        if l4len < (20 if proto == PROTO_TCP else 8):
            return f"{'tcp' if proto == PROTO_TCP else 'udp'}_truncated"
        out = bytearray(view[VNET_LEN:end])
        at = l4 - VNET_LEN + (16 if proto == PROTO_TCP else 6)
        out[at:at + 2] = b"\0\0"
        total = pseudo_sum(src, dst, proto, l4len) + sum_of(memoryview(out)[l4 - VNET_LEN:])
        out[at:at + 2] = _H.pack(finish(total))
        return [bytes(out)]
    if gso_type in (GSO_TCPV4, GSO_TCPV6):
        if proto != PROTO_TCP or end - l4 < 20:
            return "gso_bad_tcp"
        hlen = (packet[l4 + 12] >> 4) * 4
        if hlen < 20 or l4 + hlen > end:
            return "tcp_bad_offset"
        return _split_tcp(view, version, src, dst, l4, hlen, end, gso_size)
    if gso_type == GSO_UDP:
        if proto != PROTO_UDP or end - l4 < 8:
            return "gso_bad_udp"
        return _split_udp(view, version, src, dst, l4, end, gso_size)
    return "gso_unknown_type"


def _ip_for(version: int, ip_head: memoryview, src: bytes, dst: bytes, proto: int, l4len: int, n: int) -> bytes:
    if version == 4:
        head = bytearray(ip_head)
        ihl = len(head)
        ident = (_H.unpack_from(head, 4)[0] + n) & 0xFFFF
        _H.pack_into(head, 2, ihl + l4len)
        _H.pack_into(head, 4, ident)
        head[10:12] = b"\0\0"
        _H.pack_into(head, 10, finish(sum_of(head)))
        return bytes(head)
    head = bytearray(ip_head)
    _H.pack_into(head, 4, len(head) - 40 + l4len)
    return bytes(head)


def _split_tcp(view: memoryview, version: int, src: bytes, dst: bytes, l4: int, hlen: int, end: int,
               size: int) -> list[bytes]:
    ip_head = view[VNET_LEN:l4]
    tcp_head = bytearray(view[l4:l4 + hlen])
    seq = _I.unpack_from(tcp_head, 4)[0]
    flags = tcp_head[13]
    payload = view[l4 + hlen:end]
    count = max((len(payload) + size - 1) // size, 1)
    out: list[bytes] = []
    for n in range(count):
        piece = payload[n * size:(n + 1) * size]
        head = bytearray(tcp_head)
        _I.pack_into(head, 4, (seq + n * size) & 0xFFFFFFFF)
        f = flags
        if n != count - 1:
            f &= ~_TCP_FIN_PSH
        if n:
            f &= ~_TCP_CWR
        head[13] = f
        head[16:18] = b"\0\0"
        l4len = hlen + len(piece)
        _H.pack_into(head, 16, finish(pseudo_sum(src, dst, PROTO_TCP, l4len) + sum_of(head) + sum_of(piece)))
        out.append(b"".join((_ip_for(version, ip_head, src, dst, PROTO_TCP, l4len, n), head, piece)))
    return out


def _split_udp(view: memoryview, version: int, src: bytes, dst: bytes, l4: int, end: int,
               size: int) -> list[bytes]:
    ip_head = view[VNET_LEN:l4]
    sport, dport = _H.unpack_from(view, l4)[0], _H.unpack_from(view, l4 + 2)[0]
    payload = view[l4 + 8:end]
    count = max((len(payload) + size - 1) // size, 1)
    out: list[bytes] = []
    for n in range(count):
        piece = payload[n * size:(n + 1) * size]
        length = 8 + len(piece)
        head = UDP_HEADER.pack(sport, dport, length, 0)
        csum = finish(pseudo_sum(src, dst, PROTO_UDP, length) + sum_of(head) + sum_of(piece))
        head = UDP_HEADER.pack(sport, dport, length, csum)
        out.append(b"".join((_ip_for(version, ip_head, src, dst, PROTO_UDP, length, n), head, piece)))
    return out
