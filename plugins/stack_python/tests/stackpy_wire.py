"""A scripted peer for the sans-IO core: builds and decodes packets independently of the stack.

The checksum here is the textbook per-word loop (RFC 1071), deliberately not the
stack's ``int.from_bytes`` trick, so the two check each other.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def ref_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ip_bytes(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def _pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def ip_packet(src: str, dst: str, proto: int, l4: bytes, ttl: int = 64) -> bytes:
    s, d = ip_bytes(src), ip_bytes(dst)
    if len(s) == 4:
        head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0x4000, ttl, proto, 0, s, d)
        head = head[:10] + struct.pack("!H", ref_checksum(head)) + head[12:]
        return head + l4
    return struct.pack("!IHBB16s16s", 0x60000000, len(l4), proto, ttl, s, d) + l4


def tcp(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int, win: int = 65535,
        options: bytes = b"", payload: bytes = b"") -> bytes:
    hl = 20 + len(options)
    head = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, hl << 2, flags, win, 0, 0)
    seg = head + options + payload
    csum = ref_checksum(_pseudo(ip_bytes(src), ip_bytes(dst), 6, len(seg)) + seg)
    seg = seg[:16] + struct.pack("!H", csum) + seg[18:]
    return ip_packet(src, dst, 6, seg)


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    length = 8 + len(payload)
    seg = struct.pack("!HHHH", sport, dport, length, 0) + payload
    csum = ref_checksum(_pseudo(ip_bytes(src), ip_bytes(dst), 17, length) + seg) or 0xFFFF
    return ip_packet(src, dst, 17, seg[:6] + struct.pack("!H", csum) + seg[8:])


def icmp_echo(src: str, dst: str, ident: int, seq: int, payload: bytes) -> bytes:
    if ":" in src:
        msg = struct.pack("!BBHHH", 128, 0, 0, ident, seq) + payload
        csum = ref_checksum(_pseudo(ip_bytes(src), ip_bytes(dst), 58, len(msg)) + msg)
        return ip_packet(src, dst, 58, msg[:2] + struct.pack("!H", csum) + msg[4:])
    msg = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + payload
    return ip_packet(src, dst, 1, msg[:2] + struct.pack("!H", ref_checksum(msg)) + msg[4:])


def syn_opts(mss: int = 1460, wscale: int | None = 7, sack: bool = True, ts: tuple[int, int] | None = None) -> bytes:
    out = struct.pack("!BBH", 2, 4, mss)
    if sack:
        out += b"\x01\x01\x04\x02"
    if ts is not None:
        out += b"\x01\x01\x08\x0a" + struct.pack("!II", *ts)
    if wscale is not None:
        out += b"\x01\x03\x03" + bytes((wscale,))
    return out


@dataclass
class Seg:
    version: int
    src: str
    dst: str
    proto: int
    sport: int = 0
    dport: int = 0
    seq: int = 0
    ack: int = 0
    flags: int = 0
    win: int = 0
    options: dict[int, bytes] = field(default_factory=dict)
    payload: bytes = b""


def decode(packet: bytes) -> Seg:
    """Decode and verify (IP header and L4 checksums) one packet the stack sent."""
    if packet[0] >> 4 == 4:
        ihl = (packet[0] & 15) * 4
        assert ref_checksum(packet[:ihl]) == 0, "bad IPv4 header checksum"
        total = struct.unpack_from("!H", packet, 2)[0]
        assert total == len(packet)
        src, dst, proto = packet[12:16], packet[16:20], packet[9]
        assert packet[8] == 64
        l4 = packet[ihl:]
    else:
        plen = struct.unpack_from("!H", packet, 4)[0]
        assert plen + 40 == len(packet)
        src, dst, proto = packet[8:24], packet[24:40], packet[6]
        assert packet[7] == 64
        l4 = packet[40:]
    version = packet[0] >> 4
    s, d = str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst))
    if proto in (1,):
        assert ref_checksum(l4) == 0
        return Seg(version, s, d, proto, payload=l4)
    assert ref_checksum(_pseudo(src, dst, proto, len(l4)) + l4) == 0, "bad L4 checksum"
    if proto == 58:
        return Seg(version, s, d, proto, payload=l4)
    if proto == 17:
        sport, dport, _len, _c = struct.unpack_from("!HHHH", l4)
        return Seg(version, s, d, proto, sport, dport, payload=l4[8:])
    sport, dport, seq, ack, off, flags, win = struct.unpack_from("!HHIIBBH", l4)
    hl = (off >> 4) * 4
    return Seg(version, s, d, proto, sport, dport, seq, ack, flags, win, tcp_options(l4, hl), l4[hl:])


def tcp_options(l4: bytes, hl: int) -> dict[int, bytes]:
    """The options of a TCP header the stack emitted, asserting they are well formed."""
    assert 20 <= hl <= len(l4), "bad data offset"
    opts: dict[int, bytes] = {}
    i = 20
    while i < hl:
        kind = l4[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        assert i + 1 < hl, "option kind without length"
        length = l4[i + 1]
        assert length >= 2 and i + length <= hl, "bad option length"
        assert kind not in opts, "duplicate option"
        opts[kind] = l4[i + 2:i + length]
        i += length
    return opts
