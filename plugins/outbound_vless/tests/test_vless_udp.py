from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from tunray_vless.codec import PacketDecoder, encode_packet, encode_packets
from tunray_vless.codec.udp import MAX_PAYLOAD
from vless_strategies import FAST


def test_packet_layout() -> None:
    assert encode_packet(b"abc") == b"\x00\x03abc"
    assert encode_packet(b"x" * 300)[:2] == b"\x01\x2c"


def test_writer_drops_empty_and_oversize_like_xray() -> None:
    assert encode_packet(b"") == b""
    assert len(encode_packet(b"x" * MAX_PAYLOAD)) == 8192
    assert encode_packet(b"x" * (MAX_PAYLOAD + 1)) == b""
    assert encode_packets([b"a", b"", b"y" * 9000, b"bc"]) == b"\x00\x01a\x00\x02bc"


def test_decoder_waits_for_whole_packets_and_skips_empty() -> None:
    decoder = PacketDecoder()
    assert decoder.feed(b"\x00") == []
    assert decoder.feed(b"\x03ab") == []
    assert decoder.pending == 4
    assert decoder.feed(b"c\x00\x00\x00\x01z\x01") == [b"abc", b"z"]
    assert decoder.pending == 1
    # the reader takes lengths up to 65535, beyond what the writer sends
    assert decoder.feed(b"\x00" + b"m" * 256) == [b"m" * 256]
    big = b"q" * 65535
    assert PacketDecoder().feed(b"\xff\xff" + big) == [big]


@FAST
@given(st.lists(st.binary(min_size=1, max_size=MAX_PAYLOAD), max_size=8), st.data())
def test_round_trip_in_random_pieces(packets: list[bytes], data: st.DataObject) -> None:
    stream = encode_packets(packets)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    decoder = PacketDecoder()
    got: list[bytes] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        got += decoder.feed(stream[start:cut])
        start = cut
    assert got == packets
    assert decoder.pending == 0


@FAST
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    decoder = PacketDecoder()
    packets = decoder.feed(data)
    assert sum(len(p) + 2 for p in packets) + decoder.pending <= len(data)
