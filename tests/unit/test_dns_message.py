"""The sans-IO DNS codec: queries, responses, compression pointers, CNAME chains."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tunray.dns.message import (
    AAAA,
    CNAME,
    NXDOMAIN,
    SOA,
    A,
    DNSFormatError,
    Record,
    addresses,
    build_query,
    build_response,
    encode_name,
    parse_message,
)


def test_query_bytes() -> None:
    q = build_query(0x1234, "Example.COM.", A)
    assert (
        q == bytes.fromhex("1234 0100 0001 0000 0000 0000") + b"\x07Example\x03COM\x00" + b"\x00\x01\x00\x01"
    )
    msg = parse_message(q)
    assert msg.id == 0x1234 and not msg.is_response
    assert msg.questions[0].name == "example.com" and msg.questions[0].qtype == A


def test_response_with_pointers_and_cname_chain() -> None:
    query = parse_message(build_query(7, "www.example.com", A))
    wire = build_response(
        query,
        [
            Record("www.example.com", CNAME, 300, "cdn.example.net"),
            Record("cdn.example.net", CNAME, 60, "edge.example.net"),
            Record("edge.example.net", A, 120, ipaddress.IPv4Address("192.0.2.1")),
            Record("edge.example.net", A, 120, ipaddress.IPv4Address("192.0.2.2")),
            Record("unrelated.example", A, 5, ipaddress.IPv4Address("203.0.113.9")),
        ],
    )
    assert b"\xc0\x0c" in wire  # the first answer's owner name is a pointer to the question
    msg = parse_message(wire)
    assert msg.is_response and msg.rcode == 0
    assert msg.answers[0].name == "www.example.com" and msg.answers[0].data == "cdn.example.net"
    ips, ttl = addresses(msg, "www.example.com", A)
    assert ips == [ipaddress.IPv4Address("192.0.2.1"), ipaddress.IPv4Address("192.0.2.2")]
    assert ttl == 60


def test_hand_made_compression_inside_rdata() -> None:
    # Answer name = pointer to question (offset 12); CNAME rdata = "cdn" + pointer to "example.com" (offset 16).
    header = struct.pack("!HHHHHH", 1, 0x8180, 1, 2, 0, 0)
    question = b"\x03www\x07example\x03com\x00" + struct.pack("!HH", AAAA, 1)
    cname_rdata = b"\x03cdn\xc0\x10"
    ans1 = b"\xc0\x0c" + struct.pack("!HHIH", CNAME, 1, 30, len(cname_rdata)) + cname_rdata
    cdn_offset = 12 + len(question) + len(ans1) - len(cname_rdata) + 0
    ans2 = (
        struct.pack("!H", 0xC000 | cdn_offset)
        + struct.pack("!HHIH", AAAA, 1, 90, 16)
        + bytes.fromhex("20010db8" + "00" * 11 + "01")
    )
    msg = parse_message(header + question + ans1 + ans2)
    assert msg.answers[0].data == "cdn.example.com"
    assert msg.answers[1].name == "cdn.example.com"
    assert addresses(msg, "www.example.com", AAAA) == ([ipaddress.IPv6Address("2001:db8::1")], 30)


def test_negative_answer_uses_soa_ttl() -> None:
    query = parse_message(build_query(9, "nx.example", A))
    msg = parse_message(build_response(query, rcode=NXDOMAIN, authority=[Record("example", SOA, 900, 120)]))
    assert msg.rcode == NXDOMAIN
    assert addresses(msg, "nx.example", A) == ([], 120)
    empty = parse_message(build_response(query))
    assert addresses(empty, "nx.example", A) == ([], -1)


def test_pointer_loops_and_forward_pointers_are_rejected() -> None:
    header = struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0)
    with pytest.raises(DNSFormatError):
        parse_message(header + b"\xc0\x0c" + b"\x00\x01\x00\x01")  # points at itself
    with pytest.raises(DNSFormatError):
        parse_message(header + b"\xc0\x20" + b"\x00\x01\x00\x01")  # points forward


def test_cname_loop_terminates() -> None:
    query = parse_message(build_query(1, "a.example", A))
    msg = parse_message(
        build_response(
            query, [Record("a.example", CNAME, 10, "b.example"), Record("b.example", CNAME, 10, "a.example")]
        )
    )
    assert addresses(msg, "a.example", A) == ([], -1)


def test_encode_name_limits() -> None:
    with pytest.raises(ValueError):
        encode_name("a" * 64 + ".com")
    with pytest.raises(ValueError):
        encode_name(".".join(["abcdefghi"] * 30))
    assert encode_name("") == b"\x00"


@given(st.binary(max_size=300))
def test_parser_never_crashes_on_garbage(data: bytes) -> None:
    try:
        msg = parse_message(data)
    except DNSFormatError:
        return
    assert len(msg.questions) == int.from_bytes(data[4:6], "big")


@given(st.lists(st.ip_addresses(v=4), min_size=1, max_size=8), st.integers(0, 2**31 - 1))
def test_round_trip_addresses(ips: list[ipaddress.IPv4Address], ttl: int) -> None:
    query = parse_message(build_query(3, "host.example", A))
    wire = build_response(query, [Record("host.example", A, ttl, ip) for ip in ips])
    got, got_ttl = addresses(parse_message(wire), "host.example", A)
    assert got == list(dict.fromkeys(ips)) and got_ttl == ttl
