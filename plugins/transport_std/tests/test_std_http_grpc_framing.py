"""HTTP/1.1 upgrade parsing and gRPC Hunk framing (sans-IO)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tunray_transports.grpcframe import (
    GrpcFramingError,
    MessageReader,
    encode_hunk,
    encode_hunks,
    hunk_chunks,
)
from tunray_transports.http1 import (
    HandshakeError,
    ResponseReader,
    build_request,
    check_upgrade,
    parse_head,
    ws_accept,
)

RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 1.3


def test_ws_accept_rfc_example() -> None:
    assert ws_accept(RFC_KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_request_layout() -> None:
    req = build_request("/p?x=1", "example.com", [("Upgrade", "websocket"), ("X-A", "b")])
    assert req == b"GET /p?x=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nX-A: b\r\n\r\n"


RESPONSE = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)


@given(st.integers(1, len(RESPONSE) + 5))
def test_response_split_anywhere_keeps_leftover(cut: int) -> None:
    wire = RESPONSE + b"\x82\x01A"
    reader = ResponseReader()
    head = reader.feed(wire[:cut])
    rest = wire[cut:]
    if head is None:
        head, rest = reader.feed(rest), b""
    assert head is not None
    assert head.status == 101
    assert reader.leftover + rest == b"\x82\x01A"
    check_upgrade(head, ws_accept(RFC_KEY))


def test_upgrade_rejections() -> None:
    with pytest.raises(HandshakeError, match="404"):
        check_upgrade(parse_head(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0"), None)
    with pytest.raises(HandshakeError, match="Upgrade"):
        check_upgrade(parse_head(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade"), None)
    head = parse_head(RESPONSE[:-4])
    with pytest.raises(HandshakeError, match="Accept"):
        check_upgrade(head, ws_accept("AAAAAAAAAAAAAAAAAAAAAA=="))
    check_upgrade(head, None)  # HTTPUpgrade does not check the accept value, like Xray
    token = parse_head(b"HTTP/1.1 101 x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, upgrade")
    check_upgrade(token, None)
    with pytest.raises(HandshakeError):
        parse_head(b"SSH-2.0-OpenSSH_9.6")
    with pytest.raises(HandshakeError, match="longer"):
        ResponseReader(max_head=64).feed(b"HTTP/1.1 101 x\r\n" + b"X: y\r\n" * 20)


# gRPC -----------------------------------------------------------------------------


def test_hunk_bytes() -> None:
    # flag 0, length 5, then field 1 / wire type 2 (0x0a), length 3, "abc"
    assert encode_hunk(b"abc") == bytes.fromhex("00000000050a03616263")
    big = encode_hunk(b"x" * 300)
    assert big[:8] == bytes.fromhex("000000012f0aac02")  # 300 = varint ac 02; 3 + 300 = 0x12f


def test_multihunk_and_unknown_fields() -> None:
    # MultiHunk{data: ["ab", "c"]} plus an unknown varint field 2 and fixed32 field 3
    body = bytes.fromhex("0a026162") + bytes.fromhex("1096") + bytes.fromhex("01") + bytes.fromhex("0a0163")
    body += bytes.fromhex("1d01020304")
    assert list(hunk_chunks(body)) == [b"ab", b"c"]
    msg = b"\x00" + len(body).to_bytes(4, "big") + body
    assert MessageReader().feed(msg) == [b"ab", b"c"]


@given(st.lists(st.binary(max_size=2000), max_size=6), st.integers(1, 97))
def test_messages_split_anywhere(chunks: list[bytes], step: int) -> None:
    wire = b"".join(encode_hunks(c, chunk=700) for c in chunks)
    reader = MessageReader()
    out = []
    for i in range(0, len(wire), step):
        out += reader.feed(wire[i : i + step])
    assert b"".join(out) == b"".join(chunks)
    assert reader.pending == 0


@pytest.mark.parametrize(
    "wire",
    [
        b"\x01\x00\x00\x00\x01\x00",  # compressed flag
        b"\x00\x7f\xff\xff\xff",  # over the size limit
        b"\x00\x00\x00\x00\x03\x0a\x05a",  # field longer than the message
        b"\x00\x00\x00\x00\x01\x0b",  # wire type 3 (groups)
    ],
)
def test_grpc_framing_errors(wire: bytes) -> None:
    with pytest.raises(GrpcFramingError):
        MessageReader().feed(wire)
