"""tunray.net.packet: checksums against an independent RFC 1071 loop, RFC 1624 updates, GSO splitting."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st
from tunray.net import packet as P


def ref_sum(data: bytes) -> int:
    """RFC 1071 the slow way: 16-bit words, end-around carry."""
    if len(data) & 1:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ref_checksum(data: bytes) -> int:
    return ~ref_sum(data) & 0xFFFF


def ref_pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def l4_ok(src: bytes, dst: bytes, proto: int, segment: bytes) -> bool:
    return ref_sum(ref_pseudo(src, dst, proto, len(segment)) + segment) == 0xFFFF


@given(st.binary(min_size=0, max_size=3000))
def test_sum_and_finish_match_the_reference(data: bytes) -> None:
    assert P.finish(P.sum_of(data)) == (ref_checksum(data) or 0xFFFF)  # never 0: UDP's "no checksum"
    # A buffer with its checksum appended verifies, by both implementations.
    padded = data + (b"\0" if len(data) & 1 else b"")
    field = P.finish(P.sum_of(padded))
    assert P.valid(P.sum_of(padded + struct.pack("!H", field)))
    assert ref_sum(padded + struct.pack("!H", field)) == 0xFFFF


@given(st.binary(min_size=20, max_size=20), st.integers(0, 9), st.integers(0, 0xFFFF),
       st.binary(min_size=4, max_size=4))
def test_rfc1624_update_equals_a_full_recompute(header: bytes, word: int, value: int, addr: bytes) -> None:
    head = bytearray(header)
    head[10:12] = b"\0\0"
    struct.pack_into("!H", head, 10, P.finish(P.sum_of(head)))
    csum = struct.unpack_from("!H", head, 10)[0]
    # A 16-bit word (not the checksum itself) changes.
    at = 2 * word if word != 5 else 0
    old = struct.unpack_from("!H", head, at)[0]
    struct.pack_into("!H", head, at, value)
    csum = P.update(csum, old, value)
    struct.pack_into("!H", head, 10, csum)
    assert ref_sum(bytes(head)) == 0xFFFF, "the updated header does not verify"
    # An address (four bytes at an even offset) changes, as NAT does.
    old_addr = bytes(head[12:16])
    head[12:16] = addr
    struct.pack_into("!H", head, 10, P.update(csum, old_addr, addr))
    assert ref_sum(bytes(head)) == 0xFFFF


V4_SRC, V4_DST = bytes((10, 0, 0, 2)), bytes((192, 0, 2, 7))
V6_SRC, V6_DST = bytes.fromhex("fd770000000000000000000000000002"), bytes.fromhex("20010db8000000000000000000000007")


def super_tcp(version: int, payload: bytes, gso_size: int, flags: int, seq: int = 0xFFFFF000) -> bytes:
    """A TSO super-packet as the kernel hands it over: partial checksum, one header for all the data."""
    src, dst = (V4_SRC, V4_DST) if version == 4 else (V6_SRC, V6_DST)
    opts = b"\x01\x01\x08\x0a" + struct.pack("!II", 7, 9)
    head = struct.pack("!HHIIBBHHH", 40000, 443, seq, 77, (20 + len(opts)) << 2, flags, 512, 0, 0) + opts
    l4len = len(head) + len(payload)
    head = head[:16] + struct.pack("!H", P.partial(P.pseudo_sum(src, dst, P.PROTO_TCP, l4len))) + head[18:]
    if version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + l4len, 0x1000, 0x4000, 64, 6, 0, src, dst)
        ip = ip[:10] + struct.pack("!H", ref_checksum(ip)) + ip[12:]
    else:
        ip = struct.pack("!IHBB16s16s", 0x60000000, l4len, 6, 64, src, dst)
    gso = P.GSO_TCPV4 if version == 4 else P.GSO_TCPV6
    vnet = P.vnet_header(P.VNET_F_NEEDS_CSUM, gso, len(ip) + len(head), gso_size, len(ip), 16)
    return vnet + ip + head + payload


def test_gso_split_tcp_v4_and_v6() -> None:
    payload = bytes(range(256)) * 14  # 3584 bytes: three full segments of 1000 and one of 584
    for version in (4, 6):
        src, dst = (V4_SRC, V4_DST) if version == 4 else (V6_SRC, V6_DST)
        out = P.gso_split(super_tcp(version, payload, 1000, 0x80 | 0x10 | 0x08 | 0x01))  # CWR ACK PSH FIN
        assert isinstance(out, list) and len(out) == 4
        got = b""
        for n, pkt in enumerate(out):
            parsed = P.parse_ip(pkt, 0, False)
            assert not isinstance(parsed, str), parsed
            v, s, d, proto, l4, end = parsed
            assert (v, s, d, proto, end) == (version, src, dst, P.PROTO_TCP, len(pkt))
            if version == 4:
                assert ref_sum(pkt[:20]) == 0xFFFF and struct.unpack_from("!H", pkt, 4)[0] == 0x1000 + n
            segment = pkt[l4:]
            assert l4_ok(src, dst, P.PROTO_TCP, segment), f"segment {n} has a bad TCP checksum"
            seq = struct.unpack_from("!I", segment, 4)[0]
            assert seq == (0xFFFFF000 + n * 1000) & 0xFFFFFFFF  # wraps past 2**32
            flags = segment[13]
            assert bool(flags & 0x80) is (n == 0) and bool(flags & 0x09) is (n == 3) and flags & 0x10
            assert segment[20:32] == b"\x01\x01\x08\x0a" + struct.pack("!II", 7, 9)
            got += segment[32:]
        assert got == payload


def test_gso_split_udp_and_checksum_completion() -> None:
    data = b"u" * 2500
    length = 8 + len(data)
    head = struct.pack("!HHHH", 5353, 53, length, P.partial(P.pseudo_sum(V4_SRC, V4_DST, P.PROTO_UDP, length)))
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 1, 0, 64, 17, 0, V4_SRC, V4_DST)
    ip = ip[:10] + struct.pack("!H", ref_checksum(ip)) + ip[12:]
    vnet = P.vnet_header(P.VNET_F_NEEDS_CSUM, P.GSO_UDP, 28, 1200, 20, 6)
    out = P.gso_split(vnet + ip + head + data)
    assert isinstance(out, list) and [len(p) - 28 for p in out] == [1200, 1200, 100]
    for pkt in out:
        assert ref_sum(pkt[:20]) == 0xFFFF and l4_ok(V4_SRC, V4_DST, P.PROTO_UDP, pkt[20:])
    # No GSO, checksum left partial: completed in place.
    vnet = P.vnet_header(P.VNET_F_NEEDS_CSUM, P.GSO_NONE, 0, 0, 20, 6)
    out = P.gso_split(vnet + ip + head + data)
    assert isinstance(out, list) and len(out) == 1
    single = out[0]
    assert single[:26] == ip + head[:6] and l4_ok(V4_SRC, V4_DST, P.PROTO_UDP, single[20:])


def test_gso_split_drops_what_it_cannot_cut() -> None:
    assert P.gso_split(b"\0" * 5) == "vnet_truncated"
    assert P.gso_split(P.vnet_header() + b"\x45") == "ip_truncated"
    udp_as_tcp = super_tcp(4, b"x" * 100, 40, 0x10)
    udp_as_tcp = udp_as_tcp[:P.VNET_LEN + 9] + b"\x11" + udp_as_tcp[P.VNET_LEN + 10:]
    assert P.gso_split(udp_as_tcp) == "ipv4_bad_checksum"  # the IP header changed under its checksum


def test_build_udp_and_echo_reply_verify() -> None:
    pkt = P.build_udp(6, V6_DST, 53, V6_SRC, 5353, b"answer", False)
    parsed = P.parse_ip(pkt, 0, False)
    assert not isinstance(parsed, str)
    v, s, d, proto, l4, end = parsed
    assert (v, s, d, proto) == (6, V6_DST, V6_SRC, P.PROTO_UDP) and l4_ok(V6_DST, V6_SRC, P.PROTO_UDP, pkt[l4:end])
    request = bytes((8, 0, 0, 0)) + b"\x00\x07\x00\x01ping"
    request = request[:2] + struct.pack("!H", ref_checksum(request)) + request[4:]
    reply = P.echo_reply(4, V4_SRC, V4_DST, request, False)
    assert isinstance(reply, bytes) and reply[12:20] == V4_DST + V4_SRC
    assert reply[20] == 0 and ref_sum(reply[20:]) == 0xFFFF and reply[24:] == request[4:]
    assert P.echo_reply(4, V4_SRC, V4_DST, request[:6], False) == "icmp_truncated"
