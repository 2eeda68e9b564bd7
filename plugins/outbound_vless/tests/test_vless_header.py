from __future__ import annotations

import ipaddress
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tunray.net.address import Destination, Network
from tunray.net.uuid import from_text
from tunray_vless.codec import (
    NO_ADDONS,
    VISION_ADDONS,
    Addons,
    CodecError,
    Command,
    ResponseParser,
    decode_request,
    encode_request,
    encode_response,
)
from tunray_vless.codec.addons import decode_addons, encode_addons
from tunray_vless.codec.address import decode_address, encode_address
from vless_strategies import FAST, destinations, hosts, ports

EXAMPLE_ID = from_text("example")


def test_example_id_maps_to_uuidv5() -> None:
    assert EXAMPLE_ID == uuid.UUID("feb54431-301b-52bb-a6dd-e1e93e81bb9e")


def test_tcp_request_to_example_com_443() -> None:
    header = encode_request(EXAMPLE_ID, Command.TCP, Destination.parse("example.com:443"))
    expected = (
        b"\x00"
        + bytes.fromhex("feb54431301b52bba6dde1e93e81bb9e")
        + bytes.fromhex("00 01 01BB 02 0B")
        + b"example.com"
    )
    assert len(header) == 34
    assert header == expected


def test_vision_addons_bytes() -> None:
    header = encode_request(EXAMPLE_ID, Command.TCP, Destination.parse("1.2.3.4:80"), VISION_ADDONS)
    assert header[17] == 0x12
    assert header[18:20] == b"\x0a\x10"
    assert header[20:36] == b"xtls-rprx-vision"
    assert header[36] == Command.TCP
    assert header[37:] == b"\x00\x50\x01\x01\x02\x03\x04"
    assert encode_addons(VISION_ADDONS) == b"\x0a\x10xtls-rprx-vision"


def test_response_header_is_00_00() -> None:
    assert encode_response() == b"\x00\x00"
    parser = ResponseParser()
    assert parser.feed(b"\x00") is None
    assert parser.feed(b"\x00hello") == b"hello"
    assert parser.addons == NO_ADDONS


@pytest.mark.parametrize("first", [b"\x01\x00", b"\xff"])
def test_response_with_other_version_fails(first: bytes) -> None:
    with pytest.raises(CodecError):
        ResponseParser().feed(first)


def test_response_with_addons_is_skipped() -> None:
    addons = encode_addons(Addons(seed=b"\x01\x02"))
    parser = ResponseParser()
    assert parser.feed(b"\x00" + bytes((len(addons),)) + addons[:1]) is None
    assert parser.feed(addons[1:] + b"body") == b"body"
    assert parser.addons == Addons(seed=b"\x01\x02")


def test_request_round_trip_www_example_com() -> None:
    user = uuid.uuid4()
    header = encode_request(user, Command.TCP, Destination.parse("www.example.com:443"))
    parsed = decode_request(header + b"payload")
    assert parsed is not None
    request, used = parsed
    assert used == len(header)
    assert request.user_id == user
    assert request.command is Command.TCP
    assert request.destination == Destination(Network.TCP, "www.example.com", 443)
    assert request.addons == NO_ADDONS


def test_mux_request_has_no_address() -> None:
    header = encode_request(EXAMPLE_ID, Command.MUX, None)
    assert header == b"\x00" + EXAMPLE_ID.bytes + b"\x00\x03"
    parsed = decode_request(header)
    assert parsed is not None
    request, used = parsed
    assert used == 19
    assert request.destination == Destination(Network.TCP, "v1.mux.cool", 0)


def test_unknown_command_encodes_but_does_not_decode() -> None:
    header = encode_request(EXAMPLE_ID, 100, Destination.parse("www.example.com:443"))
    assert header[18] == 100
    with pytest.raises(CodecError, match="invalid request address"):
        decode_request(header)


def test_request_prefixes_are_incomplete() -> None:
    header = encode_request(EXAMPLE_ID, Command.UDP, Destination.parse("[2001:db8::1]:53", Network.UDP))
    for cut in range(len(header)):
        assert decode_request(header[:cut]) is None
    parsed = decode_request(header)
    assert parsed is not None
    assert parsed[0].destination == Destination(Network.UDP, ipaddress.ip_address("2001:db8::1"), 53)


def test_wrong_request_version_fails() -> None:
    with pytest.raises(CodecError):
        decode_request(b"\x01" + bytes(30))


def test_address_decoding_follows_xray() -> None:
    # a domain that spells an IP becomes that IP; v4-mapped IPv6 becomes IPv4
    assert decode_address(b"\x00\x35\x02\x078.8.8.8") == (ipaddress.ip_address("8.8.8.8"), 53, 11)
    mapped = ipaddress.IPv6Address("::ffff:1.2.3.4").packed
    assert decode_address(b"\x00\x35\x03" + mapped) == (ipaddress.ip_address("1.2.3.4"), 53, 19)
    with pytest.raises(CodecError):
        decode_address(b"\x00\x35\x02\x03a b")
    with pytest.raises(CodecError):
        decode_address(b"\x00\x35\x02\x00")
    with pytest.raises(CodecError):
        decode_address(b"\x00\x35\x04")
    with pytest.raises(CodecError):
        encode_address("x" * 256, 1)


def test_addons_skip_unknown_fields() -> None:
    raw = b"\x18\x96\x01" + b"\x25abcd" + b"\x0a\x01x" + b"\x12\x00"
    assert decode_addons(raw) == Addons(flow="x")
    for bad in (b"\x0a\x05ab", b"\x0b", b"\x00\x00", b"\x0a\x80"):
        with pytest.raises(CodecError):
            decode_addons(bad)


@FAST
@given(
    st.uuids(),
    st.sampled_from([Command.TCP, Command.UDP]),
    hosts,
    ports,
    st.builds(Addons, st.text(max_size=40), st.binary(max_size=40)),
)
def test_request_round_trip(
    user: uuid.UUID, command: Command, host: object, port: int, addons: Addons
) -> None:
    network = Network.UDP if command is Command.UDP else Network.TCP
    dest = Destination(network, host, port)  # type: ignore[arg-type]
    header = encode_request(user, command, dest, addons)
    parsed = decode_request(header + b"tail")
    assert parsed is not None
    request, used = parsed
    assert used == len(header)
    assert (request.user_id, request.command, request.destination, request.addons) == (
        user,
        command,
        dest,
        addons,
    )


@FAST
@given(destinations(Network.TCP))
def test_address_round_trip(dest: Destination) -> None:
    raw = encode_address(dest.host, dest.port)
    assert decode_address(b"xx" + raw, 2) == (dest.host, dest.port, len(raw) + 2)


@FAST
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_codec_errors(data: bytes) -> None:
    for decode in (decode_request, decode_address, decode_addons):
        try:
            decode(data)
        except CodecError:
            pass
    try:
        ResponseParser().feed(data)
    except CodecError:
        pass
