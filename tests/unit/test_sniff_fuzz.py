"""Hypothesis: sniffers raise nothing but NoClue/NeedMoreData, on any bytes, and the outcome of a
valid first flight depends only on how much of it has arrived."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tunray.sniff import (
    NeedMoreData,
    NoClue,
    QuicSniffer,
    SniffResult,
    sniff_http,
    sniff_quic,
    sniff_tls,
)
from tunray.sniff.quic_crypto import VERSION_1, VERSION_DRAFT29
from tunray.sniff.samples import client_hello, crypto_frame, quic_initial, tls_records

DATA = Path(__file__).parent.parent / "data" / "sniff"
_TLS = [bytes.fromhex(c["hex"]) for c in json.loads((DATA / "tls_xray.json").read_text())["cases"]]
_QUIC_JSON = json.loads((DATA / "quic_xray.json").read_text())
_QUIC = [bytes.fromhex(_QUIC_JSON["single"]["hex"])] + [
    bytes.fromhex(c["hex"]) for c in _QUIC_JSON["complex"] if c["outcome"] != "no_clue"
]
_HTTP = [
    b"GET /x HTTP/1.1\r\nUser-Agent: t\r\nHost: www.example.com:81\r\nAccept: */*\r\n\r\nbody",
    b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n",
]
SNIFFERS: list[Callable[[bytes], SniffResult]] = [sniff_http, sniff_tls, sniff_quic]
FUZZ = settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])

# Prefixes that get random bytes past each sniffer's first checks.
_PREFIXES = [
    b"GET ",
    b"post / HTTP/1.1\r\nHost:",
    b"\x16\x03\x01",
    b"\x16\x03\x01\x01\x00\x01\x00\x00\xfc\x03\x03",
    b"\xc3" + VERSION_1.to_bytes(4, "big") + b"\x08",
    b"\xc0" + VERSION_DRAFT29.to_bytes(4, "big") + b"\x08\x01\x02\x03\x04\x05\x06\x07\x08\x00\x00\x44\xd0",
]


def _outcome(sniffer: Callable[[bytes], SniffResult], data: bytes) -> str | SniffResult:
    """Run a sniffer; any exception other than the two declared ones fails the test."""
    try:
        result = sniffer(data)
    except NeedMoreData:
        return "need_more"
    except NoClue:
        return "no_clue"
    assert isinstance(result, SniffResult) and result.domain
    return result


@FUZZ
@given(st.binary(max_size=3000))
def test_random_bytes(data: bytes) -> None:
    for sniffer in SNIFFERS:
        _outcome(sniffer, data)


@FUZZ
@given(st.sampled_from(_PREFIXES), st.binary(max_size=1500))
def test_random_bytes_after_plausible_prefix(prefix: bytes, tail: bytes) -> None:
    for sniffer in SNIFFERS:
        _outcome(sniffer, prefix + tail)


@FUZZ
@given(st.sampled_from(_TLS + _QUIC + _HTTP), st.data())
def test_truncated_and_mutated_captures(capture: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(capture)))
    edits = data.draw(st.lists(st.tuples(st.integers(0, len(capture) - 1), st.integers(0, 255)), max_size=4))
    mutated = bytearray(capture)
    for pos, value in edits:
        mutated[pos] = value
    for sniffer in SNIFFERS:
        _outcome(sniffer, capture[:cut])
        _outcome(sniffer, bytes(mutated))
        _outcome(sniffer, bytes(mutated[:cut]))


@FUZZ
@given(st.binary(max_size=600), st.booleans())
def test_random_client_hello_bodies(body: bytes, in_quic: bool) -> None:
    # Random bytes where the ClientHello body goes: exercises the parser behind the framing.
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    if in_quic:
        _outcome(sniff_quic, quic_initial(crypto_frame(0, message), dcid=b"\x09" * 8))
    else:
        _outcome(sniff_tls, tls_records(message))


@FUZZ
@given(st.binary(max_size=1100))
def test_random_decrypted_initial_payloads(frames: bytes) -> None:
    # Random *authenticated* Initial payloads: exercises the frame walker behind the AEAD.
    _outcome(sniff_quic, quic_initial(frames, dcid=b"\x0a" * 8))


_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
_NAME = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)


@FUZZ
@given(_NAME, st.integers(0, 800), st.lists(st.integers(1, 400), max_size=6), st.data())
def test_tls_outcome_depends_only_on_completeness(
    name: str, padding: int, sizes: list[int], data: st.DataObject
) -> None:
    message = client_hello(name, padding=padding)
    stream = tls_records(message, sizes)
    assert _outcome(sniff_tls, stream) == SniffResult("tls", name)
    cut = data.draw(st.integers(0, len(stream) - 1))
    assert _outcome(sniff_tls, stream[:cut]) == "need_more"


@FUZZ
@given(
    _NAME,
    st.integers(0, 2500),
    st.lists(st.integers(1, 3000), max_size=8),
    st.integers(1, 3),
    st.randoms(use_true_random=False),
)
def test_quic_outcome_depends_only_on_completeness(
    name: str, padding: int, cuts: list[int], per_packet: int, rnd: random.Random
) -> None:
    hello = client_hello(name, padding=padding)
    # Random cut points, plus one every 1000 bytes so each CRYPTO frame fits in a packet.
    bounds = sorted({*range(0, len(hello), 1000), len(hello), *(c for c in cuts if c < len(hello))})
    frames = [crypto_frame(a, hello[a:b]) for a, b in itertools.pairwise(bounds)]
    rnd.shuffle(frames)
    packets: list[list[bytes]] = []
    for frame in frames:
        if not packets or len(packets[-1]) == per_packet or sum(map(len, packets[-1])) + len(frame) > 1100:
            packets.append([])
        packets[-1].append(frame)
    datagrams = [
        quic_initial(b"".join(p), dcid=b"\x0b" * 8, packet_number=pn) for pn, p in enumerate(packets)
    ]
    rnd.shuffle(datagrams)
    sniffer = QuicSniffer()
    for datagram in datagrams[:-1]:
        assert _outcome(sniffer.feed, datagram) == "need_more"
    assert _outcome(sniffer.feed, datagrams[-1]) == SniffResult("quic", name)
    assert _outcome(sniff_quic, b"".join(datagrams)) == SniffResult("quic", name)
