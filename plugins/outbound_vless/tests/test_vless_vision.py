from __future__ import annotations

import random
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tunray_vless.codec import CodecError, DirectSwitch, TrafficState, VisionPadder, VisionUnpadder
from tunray_vless.codec.vision import (
    CMD_CONTINUE,
    CMD_DIRECT,
    CMD_END,
    is_complete_records,
    reshape,
)
from vless_strategies import FAST

USER = uuid.UUID("feb54431-301b-52bb-a6dd-e1e93e81bb9e")


class MaxRandom(random.Random):
    """Always draws the largest value, to hit the clamps."""

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        return (start if stop is None else stop) - 1


def record(content_type: int, body: bytes) -> bytes:
    return bytes((content_type, 3, 3)) + len(body).to_bytes(2, "big") + body


def app_data(size: int) -> bytes:
    return record(0x17, bytes(range(256)) * (size // 256) + bytes(size % 256))


def client_hello(size: int = 465) -> bytes:
    body = b"\x01" + (size - 4).to_bytes(3, "big") + b"\x03\x03" + bytes(size - 6)
    return b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body


def server_hello(cipher: int, tls13: bool = True) -> bytes:
    sid = bytes(range(32))
    ext = b"\x00\x2b\x00\x02\x03\x04" if tls13 else b"\xff\x01\x00\x01\x00"
    body = (
        b"\x03\x03"
        + bytes(range(100, 132))
        + bytes((len(sid),))
        + sid
        + cipher.to_bytes(2, "big")
        + b"\x00"
        + len(ext).to_bytes(2, "big")
        + ext
    )
    return record(0x16, b"\x02" + len(body).to_bytes(3, "big") + body)


def blocks(stream: bytes, user: bytes = USER.bytes) -> list[tuple[int, bytes, int]]:
    """Parse a padded stream by hand: [(command, content, padding length)]."""
    assert stream[:16] == user
    pos, out = 16, []
    while pos < len(stream):
        command = stream[pos]
        content = int.from_bytes(stream[pos + 1 : pos + 3], "big")
        padding = int.from_bytes(stream[pos + 3 : pos + 5], "big")
        body = stream[pos + 5 : pos + 5 + content]
        assert stream[pos + 5 + content : pos + 5 + content + padding] == bytes(padding)
        out.append((command, body, padding))
        pos += 5 + content + padding
        if command != CMD_CONTINUE:
            break
    assert pos <= len(stream)
    return out


def test_first_block_carries_user_id_and_long_padding() -> None:
    hello = client_hello()
    padder = VisionPadder(TrafficState(USER), random.Random(7))
    out = padder.write(hello)
    [(command, content, padding)] = blocks(out)
    assert (command, content) == (CMD_CONTINUE, hello)
    assert padder.state.is_tls
    expected = random.Random(7).randrange(500) + 900 - len(hello)
    assert padding == expected
    assert 900 - len(hello) <= padding < 1400 - len(hello)
    # the next block has no user id
    second = padder.write(hello)
    assert second[0] == CMD_CONTINUE and second[1:3] == len(hello).to_bytes(2, "big")


def test_padding_only_block() -> None:
    padder = VisionPadder(TrafficState(USER), random.Random(1))
    out = padder.write_padding_only()
    [(command, content, padding)] = blocks(out)
    assert (command, content) == (CMD_CONTINUE, b"")
    assert 900 <= padding < 1400


def test_short_padding_for_long_or_non_tls_content() -> None:
    padder = VisionPadder(TrafficState(USER), random.Random(3))
    [(_, _, padding)] = blocks(padder.write(b"GET / HTTP/1.1\r\n\r\n"))
    assert padding == random.Random(3).randrange(256)


def test_padding_clamped_to_buffer() -> None:
    padder = VisionPadder(TrafficState(USER), MaxRandom())
    out = padder.write(b"x" * 8000)
    [(_, content, padding)] = blocks(out)
    assert len(content) == 8000
    assert padding == 8192 - 21 - 8000
    assert len(out) == 8192


def test_reshape_splits_big_buffers() -> None:
    assert reshape([b"a" * 8170]) == [b"a" * 8170]
    assert [len(b) for b in reshape([b"a" * 8171])] == [4096, 4075]
    tls = b"a" * 5000 + b"\x17\x03\x03" + b"b" * 3189
    assert reshape([tls]) == [tls[:5000], tls[5000:]]
    early = b"a" * 10 + b"\x17\x03\x03" + b"b" * 8179  # cut before 21: middle instead
    assert [len(b) for b in reshape([early])] == [4096, 4096]


def test_big_write_is_split_into_fitting_blocks() -> None:
    padder = VisionPadder(TrafficState(USER), MaxRandom())
    data = bytes(range(256)) * 100  # 25600 bytes: 8192, 8192, 8192, 1024 then reshaped
    parsed = blocks(padder.write(data))
    assert b"".join(c for _, c, _ in parsed) == data
    assert [len(c) for _, c, _ in parsed] == [4096, 4096, 4096, 4096, 4096, 4096, 1024]


def test_complete_records() -> None:
    assert is_complete_records(app_data(10) + app_data(300))
    assert not is_complete_records(app_data(10)[:-1])
    assert not is_complete_records(app_data(10) + b"\x17\x03")
    assert not is_complete_records(record(0x14, b"\x01") + app_data(10))
    assert not is_complete_records(record(0x17, b""))


@pytest.mark.parametrize(
    ("cipher", "tls13", "enable"),
    [(0x1301, True, True), (0x1302, True, True), (0x1305, True, False), (0xC02F, False, False)],
)
def test_filter_reads_server_hello(cipher: int, tls13: bool, enable: bool) -> None:
    state = TrafficState(USER)
    state.filter([server_hello(cipher, tls13)])
    assert state.is_tls and state.is_tls12_or_above
    assert state.cipher == cipher
    assert state.enable_xtls is enable
    assert state.packets_to_filter == 0


def test_filter_counts_buffers_and_sees_client_hello() -> None:
    state = TrafficState(USER)
    state.filter([b"hello", client_hello()])
    assert state.is_tls and not state.is_tls12_or_above
    assert state.packets_to_filter == 6


def test_non_tls_padding_ends_after_filter_budget() -> None:
    padder = VisionPadder(TrafficState(USER), random.Random(0))
    stream = b""
    for i in range(7):
        stream += padder.write(b"ping%d" % i)
    assert not padder.padding and not padder.direct
    parsed = blocks(stream)
    assert [c for c, _, _ in parsed] == [CMD_CONTINUE] * 6 + [CMD_END]
    assert padder.write(b"plain") == b"plain"
    unpadder = VisionUnpadder(TrafficState(USER))
    assert unpadder.feed(stream + b"plain") == [b"ping0ping1ping2ping3ping4ping5ping6plain"]
    assert not unpadder.padded


def tls13_exchange(allow_direct: bool = True) -> tuple[list[bytes | DirectSwitch], list[bytes], bytes]:
    """A client and a server Vision pair over an inner TLS 1.3 handshake.

    Returns what the client's unpadder produced for the server's downlink, the
    server's plaintext writes, and the client's uplink stream.
    """
    client, server = TrafficState(USER), TrafficState(USER)
    c_pad, c_unpad = VisionPadder(client, random.Random(1), allow_direct=allow_direct), VisionUnpadder(client)
    s_pad, s_unpad = VisionPadder(server, random.Random(2)), VisionUnpadder(server)

    uplink = c_pad.write(client_hello())
    assert b"".join(x for x in s_unpad.feed(uplink) if isinstance(x, bytes)) == client_hello()

    flight = server_hello(0x1301) + record(0x14, b"\x01") + app_data(2000)
    down = [flight]
    events = c_unpad.feed(s_pad.write(flight))
    assert client.enable_xtls and server.enable_xtls

    finished = record(0x14, b"\x01") + app_data(53)  # CCS first: not complete app data
    uplink_2 = c_pad.write(finished)
    assert c_pad.padding
    request = app_data(300)
    uplink_3 = c_pad.write(request)
    assert not c_pad.padding
    assert c_pad.direct is allow_direct
    s_unpad.feed(uplink_2 + uplink_3)

    response = app_data(4000)
    down.append(response)
    padded = s_pad.write(response)
    assert s_pad.direct
    raw = app_data(100) + app_data(7)
    down.append(raw)
    assert s_pad.write(raw) == raw
    # the last padded block and the first raw bytes arrive in one read
    events += c_unpad.feed(padded[:-10])
    events += c_unpad.feed(padded[-10:] + raw[:50])
    events += c_unpad.feed(raw[50:])
    return events, down, uplink + uplink_2 + uplink_3


def test_tls13_direct_switch_boundary() -> None:
    events, down, uplink = tls13_exchange()
    switches = [i for i, e in enumerate(events) if isinstance(e, DirectSwitch)]
    assert len(switches) == 1
    before = b"".join(e for e in events[: switches[0]] if isinstance(e, bytes))
    after = b"".join(e for e in events[switches[0] :] if isinstance(e, bytes))
    assert before == down[0] + down[1]
    assert after == down[2]
    commands = [c for c, _, _ in blocks(uplink)]
    assert commands[-1] == CMD_DIRECT
    assert set(commands[:-1]) == {CMD_CONTINUE}


def test_client_may_end_uplink_padding_without_direct() -> None:
    _, _, uplink = tls13_exchange(allow_direct=False)
    assert [c for c, _, _ in blocks(uplink)][-1] == CMD_END


def test_unpadder_passes_through_streams_without_user_id() -> None:
    unpadder = VisionUnpadder(TrafficState(USER))
    assert unpadder.feed(USER.bytes[:5]) == []
    assert unpadder.feed(b"zz") == [USER.bytes[:5] + b"zz"]
    assert unpadder.feed(b"more") == [b"more"]
    assert not unpadder.padded


def test_unknown_command_is_an_error() -> None:
    with pytest.raises(CodecError):
        VisionUnpadder(TrafficState(USER)).feed(USER.bytes + b"\x03\x00\x00\x00\x00")


def test_user_id_must_be_16_bytes() -> None:
    with pytest.raises(ValueError):
        TrafficState(b"short")
    with pytest.raises(ValueError):
        VisionPadder(TrafficState(USER), seed=(900, 0, 900, 256))


def _feed_in_pieces(unpadder: VisionUnpadder, stream: bytes, cuts: list[int]) -> list[bytes | DirectSwitch]:
    events: list[bytes | DirectSwitch] = []
    start = 0
    for cut in [*sorted(cuts), len(stream)]:
        events += unpadder.feed(stream[start:cut])
        start = cut
    return events


def _bulk(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


# Large buffers come from a seeded PRNG: Hypothesis drawing 20 kB byte by byte is slow.
writes = st.lists(
    st.one_of(
        st.binary(min_size=1, max_size=300),
        st.builds(_bulk, st.integers(1, 20000), st.integers(0, 2**32)),
        st.integers(1, 9000).map(app_data),
    ),
    min_size=1,
    max_size=10,
)


@FAST
@given(writes, st.integers(0, 2**32), st.lists(st.integers(0, 200_000), max_size=8))
def test_pad_unpad_identity(chunks: list[bytes], seed: int, cuts: list[int]) -> None:
    padder = VisionPadder(TrafficState(USER), random.Random(seed))
    stream = b"".join(padder.write(c) for c in chunks)
    events = _feed_in_pieces(
        VisionUnpadder(TrafficState(USER)), stream, [c % (len(stream) + 1) for c in cuts]
    )
    assert b"".join(e for e in events if isinstance(e, bytes)) == b"".join(chunks)
    assert not any(isinstance(e, DirectSwitch) for e in events)


@FAST
@given(writes, writes, st.integers(0, 2**32), st.lists(st.integers(0, 200_000), max_size=8))
def test_pad_unpad_identity_across_direct_switch(
    handshake: list[bytes], raw: list[bytes], seed: int, cuts: list[int]
) -> None:
    state = TrafficState(USER)
    state.is_tls = state.is_tls12_or_above = state.enable_xtls = True
    state.packets_to_filter = 0  # as after an inner TLS 1.3 ServerHello
    padder = VisionPadder(state, random.Random(seed))
    padded, sent_padded, sent_raw = b"", [], []
    for chunk in handshake:  # padding ends at the first whole app-data write
        if padder.direct:
            sent_raw.append(chunk)
        else:
            padded += padder.write(chunk)
            sent_padded.append(chunk)
    if not padder.direct:
        final = app_data(len(handshake[0]) % 5000 + 1)
        padded += padder.write(final)
        sent_padded.append(final)
    assert padder.direct and not padder.padding
    sent_raw += raw
    stream = padded + b"".join(padder.write(c) for c in sent_raw)
    unpadder = VisionUnpadder(TrafficState(USER))
    events = _feed_in_pieces(unpadder, stream, [c % (len(stream) + 1) for c in cuts])
    [switch] = [i for i, e in enumerate(events) if isinstance(e, DirectSwitch)]
    assert b"".join(e for e in events[:switch] if isinstance(e, bytes)) == b"".join(sent_padded)
    assert b"".join(e for e in events[switch:] if isinstance(e, bytes)) == b"".join(sent_raw)
    assert unpadder.switched


@FAST
@given(st.booleans(), st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=5))
def test_random_bytes_only_raise_codec_errors(prefix: bool, data: bytes, cuts: list[int]) -> None:
    stream = (USER.bytes if prefix else b"") + data
    try:
        _feed_in_pieces(VisionUnpadder(TrafficState(USER)), stream, [c % (len(stream) + 1) for c in cuts])
    except CodecError:
        pass
