"""The SOCKS handshake core, sans-IO: byte captures from RFC 1928/1929 and SOCKS4(a), any chunking."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tunray.net.address import Destination, Network, parse_host
from tunray_local import socks_proto as sp


def _run(hs: sp.SocksHandshake, data: bytes, cut: list[int] | None = None) -> list[sp.Event]:
    events: list[sp.Event] = []
    pos = 0
    for c in [*sorted(set(cut or [])), len(data)]:
        if c > pos:
            events += hs.receive(data[pos:c])
            pos = c
    return events


GREETING = b"\x05\x01\x00"
CONNECT_DOMAIN = b"\x05\x01\x00\x03\x0bexample.org\x01\xbb"


def test_socks5_noauth_connect_domain_with_early_payload() -> None:
    hs = sp.SocksHandshake()
    events = _run(hs, GREETING + CONNECT_DOMAIN + b"hello")
    assert events == [sp.Send(b"\x05\x00"), sp.Request(5, False, Destination(Network.TCP, "example.org", 443))]
    assert hs.leftover == b"hello" and hs.done


@given(st.lists(st.integers(min_value=0, max_value=len(GREETING + CONNECT_DOMAIN)), max_size=8))
def test_any_chunking_gives_the_same_events(cuts: list[int]) -> None:
    whole = _run(sp.SocksHandshake(), GREETING + CONNECT_DOMAIN)
    assert _run(sp.SocksHandshake(), GREETING + CONNECT_DOMAIN, cuts) == whole


def test_socks5_ipv4_and_ipv6_requests() -> None:
    v4 = b"\x05\x01\x00\x01\x0a\x00\x00\x01\x00\x50"
    assert _run(sp.SocksHandshake(), GREETING + v4)[-1] == sp.Request(5, False, Destination(Network.TCP, parse_host("10.0.0.1"), 80))
    v6 = b"\x05\x01\x00\x04" + ipaddress.IPv6Address("fd00::2").packed + b"\x00\x35"
    assert _run(sp.SocksHandshake(), GREETING + v6)[-1] == sp.Request(5, False, Destination(Network.TCP, parse_host("fd00::2"), 53))


def test_password_auth_accepts_and_names_the_user() -> None:
    hs = sp.SocksHandshake({"alice": "pw"})
    events = _run(hs, b"\x05\x02\x00\x02" + b"\x01\x05alice\x02pw" + CONNECT_DOMAIN)
    assert events[:2] == [sp.Send(b"\x05\x02"), sp.Send(b"\x01\x00")]
    assert isinstance(events[2], sp.Request) and events[2].user == "alice"


@pytest.mark.parametrize(
    ("accounts", "data", "reply"),
    [
        ({"alice": "pw"}, b"\x05\x01\x02\x01\x05alice\x02no", b"\x01\x01"),  # wrong password
        ({"alice": "pw"}, b"\x05\x01\x00", b"\x05\xff"),  # client offers no password method
        (None, b"\x05\x01\x02", b"\x05\xff"),  # client insists on a password we do not use
    ],
)
def test_auth_refusals(accounts: dict[str, str] | None, data: bytes, reply: bytes) -> None:
    events = _run(sp.SocksHandshake(accounts), data)
    assert reply in [e.data for e in events if isinstance(e, sp.Send)]
    assert isinstance(events[-1], sp.Refuse)


def test_udp_associate_only_when_enabled_and_bind_never() -> None:
    assoc = b"\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00"
    refused = _run(sp.SocksHandshake(udp=False), GREETING + assoc)
    assert refused[-2] == sp.Send(sp.reply5(sp.REP_CMD_UNSUPPORTED, sp.ZERO, 0)) and isinstance(refused[-1], sp.Refuse)
    ok = _run(sp.SocksHandshake(udp=True), GREETING + assoc)[-1]
    assert isinstance(ok, sp.Request) and ok.udp and ok.destination.network is Network.UDP
    bind = _run(sp.SocksHandshake(udp=True), GREETING + b"\x05\x02\x00\x01\x00\x00\x00\x00\x00\x00")
    assert isinstance(bind[-1], sp.Refuse) and "BIND" in bind[-1].reason


def test_socks4_and_4a() -> None:
    v4 = b"\x04\x01\x00\x50\x0a\x00\x00\x02user\x00"
    assert _run(sp.SocksHandshake(), v4) == [sp.Request(4, False, Destination(Network.TCP, parse_host("10.0.0.2"), 80))]
    v4a = b"\x04\x01\x01\xbb\x00\x00\x00\x01\x00example.org\x00rest"
    hs = sp.SocksHandshake()
    assert _run(hs, v4a) == [sp.Request(4, False, Destination(Network.TCP, "example.org", 443))]
    assert hs.leftover == b"rest"
    # SOCKS4 has no password: refused when accounts are configured (Xray)
    refused = _run(sp.SocksHandshake({"a": "b"}), v4)
    assert refused[0] == sp.Send(sp.REFUSED4) and isinstance(refused[1], sp.Refuse)


@pytest.mark.parametrize("data", [b"\x06\x01\x00", b"\x05\x01\x00\x05\x01\x00\x09" + b"\x00" * 8, b"\x05\x01\x00\x05\x01\x00\x03\x00\x00\x50"])
def test_malformed_input_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(sp.ProtocolError):
        sp.SocksHandshake().receive(data)


def test_endless_greeting_is_bounded() -> None:
    hs = sp.SocksHandshake()
    hs.receive(b"\x05\x01\x00")
    with pytest.raises(sp.ProtocolError):
        for _ in range(200):
            hs.receive(b"\x05\x01\x00\x03\xff" + b"a" * 10)


@given(
    st.one_of(
        st.ip_addresses(v=4).map(str),
        st.ip_addresses(v=6).map(str),
        st.from_regex(r"[a-z][a-z0-9]{0,20}\.test", fullmatch=True),
    ),
    st.integers(min_value=0, max_value=65535),
    st.binary(max_size=64),
)
def test_udp_datagram_round_trip(host: str, port: int, payload: bytes) -> None:
    dest = Destination(Network.UDP, parse_host(host), port)
    mapped = dest.ip.ipv4_mapped if isinstance(dest.ip, ipaddress.IPv6Address) else None
    expected = dest.with_host(mapped) if mapped is not None else dest  # v4-mapped goes as IPv4, as in Go
    assert sp.decode_udp(sp.encode_udp(dest, payload)) == (expected, payload)


def test_fragmented_udp_is_refused() -> None:
    with pytest.raises(sp.ProtocolError):
        sp.decode_udp(b"\x00\x00\x01\x01\x0a\x00\x00\x01\x00\x35data")
