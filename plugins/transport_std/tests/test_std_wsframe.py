"""WebSocket framing: RFC 6455 section 5.7 vectors, fragmentation, control frames, errors."""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tunray_transports.websocket import early_data_header
from tunray_transports.wsframe import (
    Close,
    Data,
    FrameReader,
    Opcode,
    Ping,
    Pong,
    ProtocolError,
    State,
    WebSocketConnection,
    encode_frame,
    mask,
)

RFC_KEY = bytes.fromhex("37fa213d")
HELLO = b"Hello"


def slow_mask(data: bytes, key: bytes, offset: int = 0) -> bytes:
    """The RFC's definition, byte by byte (reference for the fast version)."""
    return bytes(b ^ key[(i + offset) % 4] for i, b in enumerate(data))


def fixed_key(n: int) -> bytes:
    assert n == 4
    return RFC_KEY


def payload_of(events: Sequence[object]) -> bytes:
    return b"".join(e.payload for e in events if isinstance(e, Data))


# RFC 6455 5.7 examples ------------------------------------------------------------


def test_rfc_single_unmasked_text() -> None:
    frame = bytes.fromhex("810548656c6c6f")
    assert encode_frame(Opcode.TEXT, HELLO, None) == frame
    assert FrameReader().feed(frame) == [Data(HELLO)]


def test_rfc_single_masked_text() -> None:
    frame = bytes.fromhex("818537fa213d7f9f4d5158")
    assert encode_frame(Opcode.TEXT, HELLO, RFC_KEY) == frame
    # A server must not mask; a reader that allows it (server side) unmasks.
    assert FrameReader(accept_masked=True).feed(frame) == [Data(HELLO)]
    with pytest.raises(ProtocolError):
        FrameReader().feed(frame)


def test_rfc_fragmented_unmasked_text() -> None:
    frames = bytes.fromhex("010348656c") + bytes.fromhex("80026c6f")
    events = FrameReader().feed(frames)
    assert events == [Data(b"Hel"), Data(b"lo")]


def test_rfc_ping_and_masked_pong() -> None:
    ping = bytes.fromhex("890548656c6c6f")
    conn = WebSocketConnection(random=fixed_key)
    assert conn.receive(ping) == [Ping(HELLO)]
    # The reply is the RFC's "masked Pong" example, byte for byte.
    assert conn.data_to_send() == bytes.fromhex("8a8537fa213d7f9f4d5158")
    assert conn.data_to_send() == b""


@pytest.mark.parametrize(
    ("size", "header"),
    [(256, bytes.fromhex("827e0100")), (65536, bytes.fromhex("827f0000000000010000"))],
)
def test_rfc_extended_lengths(size: int, header: bytes) -> None:
    payload = bytes(range(256)) * (size // 256)
    frame = encode_frame(Opcode.BINARY, payload, None)
    assert frame[: len(header)] == header
    assert frame[len(header) :] == payload
    assert payload_of(FrameReader().feed(frame)) == payload


# masking ------------------------------------------------------------------------


@given(st.binary(max_size=300), st.binary(min_size=4, max_size=4), st.integers(0, 7))
def test_mask_matches_definition(data: bytes, key: bytes, offset: int) -> None:
    assert mask(data, key, offset) == slow_mask(data, key, offset)
    assert mask(mask(data, key, offset), key, offset) == data


@given(st.binary(max_size=200), st.binary(min_size=4, max_size=4), st.integers(0, 200))
def test_mask_in_pieces_equals_whole(data: bytes, key: bytes, cut: int) -> None:
    cut = min(cut, len(data))
    assert mask(data[:cut], key, 0) + mask(data[cut:], key, cut) == mask(data, key)


def test_client_frames_are_masked_with_fresh_keys() -> None:
    keys = iter([b"\x01\x02\x03\x04", b"\xaa\xbb\xcc\xdd"])
    conn = WebSocketConnection(random=lambda n: next(keys), max_frame=4)
    wire = conn.send(b"abcdefg")
    server = FrameReader(accept_masked=True)
    assert payload_of(server.feed(wire)) == b"abcdefg"
    # two frames (max_frame=4): FIN+binary, MASK bit set, each with its own key
    assert wire[0] == 0x82 and wire[1] == 0x84 and wire[2:6] == b"\x01\x02\x03\x04"
    assert wire[10] == 0x82 and wire[11] == 0x83 and wire[12:16] == b"\xaa\xbb\xcc\xdd"


# streaming and fragmentation -----------------------------------------------------------


@given(
    st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=6),
    st.lists(st.integers(1, 50), min_size=1, max_size=30),
    st.booleans(),
)
def test_any_split_of_any_frames_gives_the_payload(
    messages: list[bytes], cuts: list[int], masked: bool
) -> None:
    wire = b"".join(encode_frame(Opcode.BINARY, m, RFC_KEY if masked else None) for m in messages)
    reader = FrameReader(accept_masked=masked)
    got = []
    pos = 0
    for c in cuts * (len(wire) // max(1, sum(cuts)) + 1):
        got += reader.feed(wire[pos : pos + c])
        pos += c
        if pos >= len(wire):
            break
    got += reader.feed(wire[pos:])
    assert payload_of(got) == b"".join(messages)


def test_control_frame_inside_fragmented_message() -> None:
    wire = (
        encode_frame(Opcode.BINARY, b"Hel", None, fin=False)
        + encode_frame(Opcode.PING, b"p", None)
        + encode_frame(Opcode.CONTINUATION, b"l", None, fin=False)
        + encode_frame(Opcode.CONTINUATION, b"o", None)
    )
    conn = WebSocketConnection(random=fixed_key)
    events = conn.receive(wire)
    assert payload_of(events) == HELLO
    assert Ping(b"p") in events
    assert conn.data_to_send() == encode_frame(Opcode.PONG, b"p", RFC_KEY)


def test_pong_event_and_empty_frames() -> None:
    wire = encode_frame(Opcode.PONG, b"", None) + encode_frame(Opcode.BINARY, b"", None)
    assert FrameReader().feed(wire) == [Pong(b"")]


# close handling -----------------------------------------------------------------------


def test_server_close_is_answered_once() -> None:
    conn = WebSocketConnection(random=fixed_key)
    close = encode_frame(Opcode.CLOSE, struct.pack("!H", 1001) + b"bye", None)
    assert conn.receive(close) == [Close(1001, "bye")]
    assert conn.state is State.CLOSE_RECEIVED
    assert conn.data_to_send() == encode_frame(Opcode.CLOSE, struct.pack("!H", 1001), RFC_KEY)
    with pytest.raises(ConnectionResetError):
        conn.send(b"late")
    assert conn.close() == b""


def test_client_close_then_server_reply() -> None:
    conn = WebSocketConnection(random=fixed_key)
    frame = conn.close(1000, "done")
    assert FrameReader(accept_masked=True).feed(frame) == [Close(1000, "done")]
    assert conn.state is State.CLOSE_SENT
    assert conn.close() == b""
    conn.receive(encode_frame(Opcode.CLOSE, b"", None))
    assert conn.state.value == "closed"
    assert conn.data_to_send() == b""


@pytest.mark.parametrize(
    "wire",
    [
        bytes([0xC2, 0x00]),  # RSV1 set
        bytes([0x83, 0x00]),  # reserved opcode 3
        encode_frame(Opcode.CONTINUATION, b"x", None),  # continuation without a message
        encode_frame(Opcode.BINARY, b"a", None, fin=False) + encode_frame(Opcode.BINARY, b"b", None),
        encode_frame(Opcode.PING, b"x", None, fin=False),  # fragmented control frame
        bytes([0x89, 0x7E, 0x00, 0x7E]) + b"x" * 126,  # control frame > 125 bytes
        bytes([0x88, 0x01, 0x03]),  # close with a 1-byte payload
        bytes([0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0]),  # 64-bit length with the top bit set
    ],
)
def test_protocol_errors(wire: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        FrameReader().feed(wire)
    assert info.value.code == 1002


def test_early_data_header_is_base64url_without_padding() -> None:
    raw = bytes([0xFB, 0xFF, 0xBF, 0x00, 0x01])
    text = early_data_header(raw)
    assert "=" not in text and "+" not in text and "/" not in text
    assert base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)) == raw
