from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tunray.net.address import Destination, Network
from tunray_vless.codec import CodecError, XudpReader, XudpWriter, global_id
from tunray_vless.codec.mux import (
    OPTION_DATA,
    Frame,
    FrameDecoder,
    FrameMeta,
    SessionWriter,
    Status,
    encode_frame,
    encode_meta,
)
from tunray_vless.codec.xudp import MAX_PACKET
from vless_strategies import FAST, destinations

GID = bytes.fromhex("0102030405060708")


def udp(text: str) -> Destination:
    return Destination.parse(text, Network.UDP)


def test_first_packet_to_8_8_8_8_53() -> None:
    frame = XudpWriter(udp("8.8.8.8:53"), GID).write(b"query", udp("8.8.8.8:53"))
    expected = bytes.fromhex("0014 0000 01 01 02 0035 01 08080808") + GID + b"\x00\x05query"
    assert frame == expected


def test_later_packets_are_keep_with_their_address() -> None:
    writer = XudpWriter(udp("8.8.8.8:53"), GID)
    writer.write(b"q1", udp("8.8.8.8:53"))
    assert (
        writer.write(b"q2", udp("1.1.1.1:53"))
        == bytes.fromhex("000c 0000 02 01 02 0035 01 01010101 0002") + b"q2"
    )
    assert writer.write(b"q3") == bytes.fromhex("0004 0000 02 01 0002") + b"q3"


def test_first_frame_without_packet_address_has_no_global_id() -> None:
    frame = XudpWriter(udp("8.8.8.8:53"), GID).write(b"x")
    assert frame[:2] == b"\x00\x0c"
    [decoded] = FrameDecoder().feed(frame)
    assert decoded.meta.global_id is None


def test_writer_drops_like_xray() -> None:
    writer = XudpWriter(udp("8.8.8.8:53"), GID)
    assert writer.write(b"") == b""
    assert writer.write(b"x" * (MAX_PACKET + 1)) == b""
    assert MAX_PACKET == 7526
    # a dropped packet does not use up the New frame
    assert writer.write(b"x" * MAX_PACKET)[4] == Status.NEW


def test_xray_read_write_one_byte() -> None:
    # Xray's TestXudpReadWrite: a writer for tcp:127.0.0.1:1345 writes 'a' with b.UDP set.
    dest = Destination.parse("127.0.0.1:1345")
    stream = XudpWriter(dest, bytes(8)).write(b"a", dest)
    [(data, source)] = XudpReader(dest).feed(stream)
    assert data == b"a"
    assert source.port == 1345
    assert source == Destination(Network.UDP, ipaddress.ip_address("127.0.0.1"), 1345)


def test_server_sees_new_then_keep_with_global_id() -> None:
    writer = XudpWriter(udp("[2001:db8::5]:443"), GID)
    stream = writer.write(b"one", udp("[2001:db8::5]:443")) + writer.write(b"two", udp("example.org:53"))
    first, second = FrameDecoder().feed(stream)
    assert first == Frame(FrameMeta(0, Status.NEW, OPTION_DATA, udp("[2001:db8::5]:443"), GID), b"one")
    assert second == Frame(FrameMeta(0, Status.KEEP, OPTION_DATA, udp("example.org:53")), b"two")


def test_reader_sources_keepalive_and_end() -> None:
    session = udp("9.9.9.9:53")
    stream = (
        encode_frame(FrameMeta(0, Status.KEEP, OPTION_DATA, udp("1.2.3.4:5")), b"from-1234")
        + encode_frame(FrameMeta(0, Status.KEEPALIVE, OPTION_DATA), b"ignored")
        + encode_frame(FrameMeta(0, Status.KEEP, OPTION_DATA), b"")
        + encode_frame(FrameMeta(0, Status.KEEP, OPTION_DATA), b"default")
        + encode_meta(FrameMeta(0, Status.END))
        + encode_frame(FrameMeta(0, Status.KEEP, OPTION_DATA), b"after end")
    )
    reader = XudpReader(session)
    got = []
    for i in range(len(stream)):  # one byte at a time
        got += reader.feed(stream[i : i + 1])
    assert got == [(b"from-1234", udp("1.2.3.4:5")), (b"default", session)]
    assert reader.eof


def test_reader_short_meta_is_eof() -> None:
    reader = XudpReader(udp("9.9.9.9:53"))
    assert reader.feed(b"\x00\x03abc") == []
    assert reader.eof


def test_meta_len_over_512_rejected() -> None:
    with pytest.raises(CodecError):
        XudpReader(udp("9.9.9.9:53")).feed(b"\x02\x01")
    with pytest.raises(CodecError):
        FrameDecoder().feed(b"\x02\x01")
    # exactly 512 is fine (a KeepAlive padded with zeros)
    assert FrameDecoder().feed(b"\x02\x00" + b"\x00\x00\x04\x00" + bytes(508)) == [
        Frame(FrameMeta(0, Status.KEEPALIVE, 0), None)
    ]
    with pytest.raises(CodecError):
        FrameDecoder().feed(b"\x00\x03abc")


def test_mux_writer_sequence_xray_reader_writer() -> None:
    # Xray common/mux TestReaderWriter, frame for frame.
    dest1 = Destination.parse("example.com:80")
    dest2 = Destination.parse("127.0.0.1:443")
    dest3 = Destination.parse("[::1]:18374")
    w1, w2, w3 = SessionWriter(1, dest1), SessionWriter(2, dest2), SessionWriter(3, dest3)
    stream = b"".join(
        [
            w1.write(b"abcd"),
            w2.write(b""),
            w1.write(b"efgh"),
            w3.write(b"x"),
            w1.close(),
            w3.close(),
            w2.write(b"y"),
            w2.close(),
        ]
    )
    frames = FrameDecoder().feed(stream)
    assert frames == [
        Frame(FrameMeta(1, Status.NEW, OPTION_DATA, dest1), b"abcd"),
        Frame(FrameMeta(2, Status.NEW, 0, dest2), None),
        Frame(FrameMeta(1, Status.KEEP, OPTION_DATA), b"efgh"),
        Frame(FrameMeta(3, Status.NEW, OPTION_DATA, dest3), b"x"),
        Frame(FrameMeta(1, Status.END, 0), None),
        Frame(FrameMeta(3, Status.END, 0), None),
        Frame(FrameMeta(2, Status.KEEP, OPTION_DATA), b"y"),
        Frame(FrameMeta(2, Status.END, 0), None),
    ]


def test_stream_writer_chunks_at_8k() -> None:
    writer = SessionWriter(7, Destination.parse("example.com:80"))
    frames = FrameDecoder().feed(writer.write(b"z" * 20000))
    assert [len(f.data or b"") for f in frames] == [8192, 8192, 3616]
    assert [f.meta.status for f in frames] == [Status.NEW, Status.KEEP, Status.KEEP]


def test_global_id_is_keyed_blake3_of_source() -> None:
    import blake3

    key = bytes(range(32))
    gid = global_id("udp:10.0.0.2:5353", key)
    assert gid == blake3.blake3(b"udp:10.0.0.2:5353", key=key).digest()[:8]
    assert global_id("udp:10.0.0.2:5354", key) != gid
    assert global_id("udp:10.0.0.2:5353", bytes(32)) != gid
    with pytest.raises(ValueError):
        global_id("udp:10.0.0.2:5353", b"short")


@FAST
@given(
    destinations(Network.UDP),
    st.lists(
        st.tuples(
            st.binary(min_size=1, max_size=MAX_PACKET), st.one_of(st.none(), destinations(Network.UDP))
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_xudp_client_to_server_round_trip(
    session: Destination, packets: list[tuple[bytes, Destination | None]]
) -> None:
    writer = XudpWriter(session, GID)
    frames = FrameDecoder().feed(b"".join(writer.write(p, d) for p, d in packets))
    assert [f.data for f in frames] == [p for p, _ in packets]
    assert frames[0].meta.status == Status.NEW and frames[0].meta.target == session
    assert frames[0].meta.global_id == (GID if packets[0][1] is not None else None)
    for frame, (_, dest) in zip(frames[1:], packets[1:], strict=True):
        assert frame.meta.status == Status.KEEP
        assert frame.meta.target == dest


@FAST
@given(
    destinations(Network.UDP),
    st.lists(
        st.tuples(st.binary(min_size=1, max_size=2000), st.one_of(st.none(), destinations(Network.UDP))),
        max_size=6,
    ),
    st.data(),
)
def test_xudp_server_to_client_round_trip(
    session: Destination, packets: list[tuple[bytes, Destination | None]], data: st.DataObject
) -> None:
    stream = b"".join(encode_frame(FrameMeta(0, Status.KEEP, OPTION_DATA, d), p) for p, d in packets)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    reader = XudpReader(session)
    got = []
    start = 0
    for cut in [*cuts, len(stream)]:
        got += reader.feed(stream[start:cut])
        start = cut
    assert got == [(p, d or session) for p, d in packets]
    assert not reader.eof


@FAST
@given(st.binary(max_size=700))
def test_random_bytes_only_raise_codec_errors(data: bytes) -> None:
    for decoder in (FrameDecoder(), XudpReader(udp("1.1.1.1:53"))):
        try:
            decoder.feed(data)
        except CodecError:
            pass
