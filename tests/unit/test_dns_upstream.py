"""Byte layouts the DNS upstreams put on the wire (EDNS0, client subnet, DoH's ID 0)."""

from __future__ import annotations

import ipaddress

from tunray.dns.message import A, parse_message
from tunray.dns.upstream import check_reply, make_query, opt_record


def test_client_subnet_option_layout_rfc7871() -> None:
    # NAME=root | TYPE=41 | CLASS=1350 | TTL=0 | RDLEN=11 | CODE=8 LEN=7 FAMILY=1 SRC=24 SCOPE=0 ADDR=3 bytes
    assert opt_record(ipaddress.ip_address("192.0.2.77")) == bytes.fromhex("00 0029 0546 00000000 000b 0008 0007 0001 18 00 c00002")
    v6 = opt_record(ipaddress.ip_address("2001:db8:1:2:3:4:5:6"))
    assert v6[11:19] == bytes.fromhex("0008 0010 0002 60 00") and v6[19:] == bytes.fromhex("20010db8000100020003 0004")
    assert opt_record(None) == bytes.fromhex("00 0029 0546 00000000 0000")


def test_queries_with_and_without_edns_parse_and_match() -> None:
    qid, plain = make_query("www.zone.test", A, edns=False, client_ip=None)
    msg = parse_message(plain)
    assert (msg.id, msg.questions[0].name, msg.additional) == (qid, "www.zone.test", [])
    _, edns = make_query("www.zone.test", A, edns=True, client_ip=ipaddress.ip_address("198.51.100.9"))
    extra = parse_message(edns).additional
    assert [(r.rtype, r.rclass) for r in extra] == [(41, 1350)]
    # a reply must echo the ID and the question; anything else is ignored
    reply = bytearray(plain)
    reply[2] |= 0x80  # QR
    assert check_reply(bytes(reply), qid, "www.zone.test", A) is not None
    assert check_reply(bytes(reply), (qid + 1) & 0xFFFF, "www.zone.test", A) is None
    assert check_reply(bytes(reply), qid, "other.test", A) is None
    assert check_reply(plain, qid, "www.zone.test", A) is None  # a query, not a reply
