"""QUIC sniffer: Xray's Chrome captures, RFC 9001 key vectors, and Initials built to order."""

from __future__ import annotations

import itertools
import json
import random
import re
from pathlib import Path

import pytest
from tunray.sniff import (
    UDP_SNIFFERS,
    NeedMoreData,
    NoClue,
    QuicSniffer,
    SniffResult,
    sniff_quic,
    sniff_quic_packets,
)
from tunray.sniff.quic import MAX_CRYPTO_STREAM
from tunray.sniff.quic_crypto import VERSION_1, VERSION_DRAFT29, client_initial_keys
from tunray.sniff.samples import client_hello, crypto_frame, quic_initial, varint

DATA = Path(__file__).parent.parent / "data" / "sniff"
XRAY = json.loads((DATA / "quic_xray.json").read_text())
ZERO_PADDED = json.loads((DATA / "quic_zero_padded.json").read_text())
DCID = bytes.fromhex("8394c8f03e515708")


def _outcome(data: bytes) -> tuple[str, str]:
    try:
        return "ok", sniff_quic(data).domain
    except NeedMoreData:
        return "need_more", ""
    except NoClue:
        return "no_clue", ""


def _chrome_flights() -> list[tuple[str, list[bytes], str]]:
    """Split each multi-packet Chrome capture into its datagrams, using the lengths of Xray's
    "packet 1", "packet 1-2", ... prefixes as boundaries."""
    groups: dict[str, list[dict[str, str]]] = {}
    for case in XRAY["complex"]:
        match = re.match(r"QUIC Chromebook (Handshake\[\d+\]);", case["name"])
        if match:
            groups.setdefault(match.group(1), []).append(case)
    flights = []
    for name, cases in groups.items():
        buffers = sorted((bytes.fromhex(c["hex"]) for c in cases), key=len)
        bounds = [0] + [len(b) for b in buffers]
        full = buffers[-1]
        datagrams = [full[a:b] for a, b in itertools.pairwise(bounds)]
        domain = next(c["domain"] for c in cases if c["outcome"] == "ok")
        flights.append((name, datagrams, domain))
    return flights


CHROME_FLIGHTS = _chrome_flights()


def test_xray_sniff_quic() -> None:
    assert sniff_quic(bytes.fromhex(XRAY["single"]["hex"])) == SniffResult("quic", "www.google.com")


@pytest.mark.parametrize("case", XRAY["complex"], ids=[c["name"] for c in XRAY["complex"]])
def test_xray_sniff_quic_complex(case: dict[str, str]) -> None:
    expected = (case["outcome"], case["domain"] if case["outcome"] == "ok" else "")
    assert _outcome(bytes.fromhex(case["hex"])) == expected


def test_xray_incomplete_server_name() -> None:
    both = bytes.fromhex(XRAY["incomplete_server_name"]["hex"])
    first = both[:1250].ljust(1250, b"\x00")
    with pytest.raises(NeedMoreData):
        sniff_quic(first)
    assert sniff_quic(both).domain == "play.google.com"


def test_xray_packet_number_length_4() -> None:
    assert sniff_quic(bytes.fromhex(XRAY["pn_length_4"]["hex"])).domain == "www.google.com"


@pytest.mark.parametrize("hexdata", XRAY["fake"])
def test_xray_fake_packets(hexdata: str) -> None:
    with pytest.raises(NoClue):
        sniff_quic(bytes.fromhex(hexdata))


def test_chrome_captures_split_into_datagrams() -> None:
    assert len(CHROME_FLIGHTS) == 7
    for _name, datagrams, domain in CHROME_FLIGHTS:
        assert len(datagrams) >= 2
        sniffer = QuicSniffer()
        for datagram in datagrams[:-1]:
            with pytest.raises(NeedMoreData):
                sniffer.feed(datagram)
        assert sniffer.feed(datagrams[-1]) == SniffResult("quic", domain)
        assert sniffer.feed(b"anything later") == SniffResult("quic", domain)  # result is kept
        assert sniff_quic_packets(datagrams).domain == domain
        with pytest.raises(NeedMoreData):
            sniff_quic_packets(datagrams[:-1])


def test_chrome_captures_out_of_order() -> None:
    for _name, datagrams, domain in CHROME_FLIGHTS:
        assert sniff_quic_packets(list(reversed(datagrams))).domain == domain


def test_zero_padded_datagrams() -> None:
    datagrams = [bytes.fromhex(h) for h in ZERO_PADDED["datagrams"]]
    assert all(d.endswith(bytes(32)) for d in datagrams)
    with pytest.raises(NeedMoreData):
        sniff_quic(datagrams[0])
    assert sniff_quic(b"".join(datagrams)).domain == ZERO_PADDED["expected_domain"]
    assert sniff_quic_packets(datagrams).domain == ZERO_PADDED["expected_domain"]


def test_rfc9001_a1_client_initial_keys() -> None:
    keys = client_initial_keys(VERSION_1, DCID)
    assert keys.key.hex() == "1f369613dd76d5467730efcbe3b1a22d"
    assert keys.iv.hex() == "fa044b2f42a3fd3b46fb255c"
    assert keys.hp.hex() == "9f50449e04a0e810283a1e9933adedd2"
    # RFC 9001 A.2: header protection sample and mask of the client Initial.
    assert keys.header_mask(bytes.fromhex("d1b1c98dd7689fb8ec11d242b123dc9b"))[:5].hex() == "437b9aec36"


def test_rfc9001_a2_protected_header() -> None:
    # A.2 protects a header ending in packet number 2 (4 bytes) to c0 ... 7b9aec34.
    hello = client_hello("example.com")
    packet = quic_initial(crypto_frame(0, hello), dcid=DCID, packet_number=2, pn_len=4)
    assert len(packet) == 1200
    assert packet[1:18].hex() == "00000001088394c8f03e5157080000449e"  # A.2 header up to Length
    mask = client_initial_keys(VERSION_1, DCID).header_mask(packet[22:38])  # sample = pn offset 18 + 4
    assert packet[0] ^ (mask[0] & 0x0F) == 0xC3
    assert bytes(a ^ b for a, b in zip(packet[18:22], mask[1:5], strict=True)) == b"\x00\x00\x00\x02"
    assert sniff_quic(packet).domain == "example.com"


@pytest.mark.parametrize("version", [VERSION_1, VERSION_DRAFT29])
def test_built_initial_each_version(version: int) -> None:
    packet = quic_initial(crypto_frame(0, client_hello("v.example")), dcid=b"\x01" * 8, version=version)
    assert sniff_quic(packet) == SniffResult("quic", "v.example")


def test_version_salt_matters() -> None:
    packet = bytearray(quic_initial(crypto_frame(0, client_hello("v.example")), dcid=b"\x01" * 8))
    packet[1:5] = VERSION_DRAFT29.to_bytes(4, "big")  # v1 keys, draft-29 label: AEAD must fail
    with pytest.raises(NoClue):
        sniff_quic(bytes(packet))


def _split_flight(
    hello: bytes, cuts: list[int], dcid: bytes, frames_per_packet: int, seed: int
) -> list[bytes]:
    """Cut *hello* into CRYPTO frames at *cuts*, shuffle them, and pack them into Initials."""
    bounds = [0, *sorted(set(cuts)), len(hello)]
    frames = [crypto_frame(a, hello[a:b]) for a, b in itertools.pairwise(bounds) if b > a]
    random.Random(seed).shuffle(frames)
    packets = []
    for pn, i in enumerate(range(0, len(frames), frames_per_packet)):
        extra = (
            b"\x01\x00\x00" + b"\x02" + varint(0) + varint(0) + varint(1) + varint(0) + varint(1) + varint(0)
        )
        packets.append(
            quic_initial(extra + b"".join(frames[i : i + frames_per_packet]), dcid=dcid, packet_number=pn)
        )
    return packets


def test_crypto_reassembly_across_shuffled_packets() -> None:
    hello = client_hello("chaos.example.net", padding=1500)  # ClientHello larger than one packet
    datagrams = _split_flight(hello, [5, 40, 41, 300, 900, 1400], b"\xaa" * 8, 2, seed=7)
    assert len(datagrams) == 4
    sniffer = QuicSniffer()
    for datagram in datagrams[:-1]:
        with pytest.raises(NeedMoreData):
            sniffer.feed(datagram)
    assert sniffer.feed(datagrams[-1]).domain == "chaos.example.net"


def test_coalesced_packets_in_one_datagram() -> None:
    hello = client_hello("coalesced.example", padding=900)
    first, second = _split_flight(hello, [700], b"\xbb" * 8, 1, seed=1)
    handshake = (
        bytes([0xE0])
        + VERSION_1.to_bytes(4, "big")
        + b"\x08"
        + b"\xbb" * 8
        + b"\x00"
        + varint(20)
        + bytes(20)
    )
    short_header = b"\x40" + bytes(30)
    assert sniff_quic(first + handshake + second + short_header).domain == "coalesced.example"


def test_packets_of_another_connection_are_ignored() -> None:
    hello = client_hello("mine.example", padding=900)
    first, second = _split_flight(hello, [600], b"\x01" * 8, 1, seed=3)
    foreign = quic_initial(crypto_frame(0, client_hello("theirs.example")), dcid=b"\x02" * 8)
    sniffer = QuicSniffer()
    with pytest.raises(NeedMoreData):
        sniffer.feed(first)
    with pytest.raises(NeedMoreData):
        sniffer.feed(foreign)
    assert sniffer.feed(second).domain == "mine.example"


def _initial_with(frames: bytes, pad_to: int = 1200) -> bytes:
    return quic_initial(frames, dcid=b"\x05" * 8, pad_to=pad_to)


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        bytes([0xC0]) + (0).to_bytes(4, "big") + b"\x08" + bytes(8) + b"\x00",  # version negotiation
        bytes([0xC0])
        + (0x6B3343CF).to_bytes(4, "big")
        + b"\x08"
        + bytes(8)
        + b"\x00\x00\x41\x00"
        + bytes(256),
        bytes([0xF0]) + VERSION_1.to_bytes(4, "big") + b"\x08" + bytes(8) + b"\x00" + bytes(16),  # Retry
        bytes([0xC0]) + VERSION_1.to_bytes(4, "big") + b"\x15" + bytes(21) + b"\x00\x00\x41\x00" + bytes(256),
        _initial_with(b"\x08\x00\x05hello"),  # STREAM frame: not allowed in Initial
        _initial_with(crypto_frame(0, b"\x02\x00\x00\x00")),  # ServerHello, not ClientHello
        _initial_with(crypto_frame(0, client_hello(None))),  # no SNI
        _initial_with(crypto_frame(MAX_CRYPTO_STREAM, b"x")),  # beyond the reassembly limit
        _initial_with(b"\x06\x00\x40\xff" + b"short" * 4, pad_to=0),  # CRYPTO longer than the payload
        _initial_with(b"\x02\x00\x00\x05\x00", pad_to=0),  # ACK cut inside its ranges
    ],
    ids=[
        "empty",
        "vneg",
        "unknown-version",
        "retry",
        "long-cid",
        "stream",
        "server-hello",
        "no-sni",
        "limit",
        "cut-crypto",
        "cut-ack",
    ],
)
def test_no_clue(datagram: bytes) -> None:
    with pytest.raises(NoClue):
        sniff_quic(datagram)


def test_tampered_ciphertext_is_no_clue_and_sticky() -> None:
    good = _initial_with(crypto_frame(0, client_hello("t.example")))
    bad = bytearray(good)
    bad[-1] ^= 1
    sniffer = QuicSniffer()
    with pytest.raises(NoClue):
        sniffer.feed(bytes(bad))
    with pytest.raises(NoClue):
        sniffer.feed(good)  # a flow once rejected stays rejected


def test_truncated_datagram_is_no_clue() -> None:
    good = _initial_with(crypto_frame(0, client_hello("t.example")))
    for n in (1, 5, 10, 30, 100, len(good) - 1):
        with pytest.raises(NoClue):
            sniff_quic(good[:n])


def test_registered_as_udp_sniffer() -> None:
    assert UDP_SNIFFERS["quic"] is sniff_quic
