"""TLS sniffer: Xray's captured ClientHellos, a live CPython ``ssl`` ClientHello, record
spanning and Xray's SNI rules."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest
from tunray.sniff import TCP_SNIFFERS, NeedMoreData, NoClue, SniffResult, sniff_tls
from tunray.sniff.samples import client_hello, server_name_extension, tls_records

DATA = Path(__file__).parent.parent / "data" / "sniff"
XRAY_CASES = json.loads((DATA / "tls_xray.json").read_text())["cases"]


def _python_ssl_client_hello(server_hostname: str, maximum: ssl.TLSVersion | None = None) -> bytes:
    """The first flight of a real TLS client (OpenSSL via CPython), captured from a MemoryBIO."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if maximum is not None:
        ctx.maximum_version = maximum
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("case", XRAY_CASES, ids=[c["domain"] for c in XRAY_CASES])
def test_xray_captures(case: dict[str, str]) -> None:
    assert sniff_tls(bytes.fromhex(case["hex"])) == SniffResult("tls", case["domain"])


@pytest.mark.parametrize("case", XRAY_CASES, ids=[c["domain"] for c in XRAY_CASES])
def test_every_truncation_of_a_capture_needs_more(case: dict[str, str]) -> None:
    data = bytes.fromhex(case["hex"])
    for n in range(len(data)):
        with pytest.raises(NeedMoreData):
            sniff_tls(data[:n])


@pytest.mark.parametrize("maximum", [None, ssl.TLSVersion.TLSv1_2])
def test_python_ssl_client_hello(maximum: ssl.TLSVersion | None) -> None:
    flight = _python_ssl_client_hello("example.org", maximum)
    assert flight[0] == 0x16
    assert sniff_tls(flight) == SniffResult("tls", "example.org")


def test_python_ssl_client_hello_without_sni_is_no_clue() -> None:
    # An IP literal as server_hostname makes OpenSSL omit SNI (RFC 6066 forbids IP names).
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="192.0.2.1")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    with pytest.raises(NoClue):
        sniff_tls(outgoing.read())


def test_python_ssl_client_hello_resplit_into_records() -> None:
    flight = _python_ssl_client_hello("records.example.org")
    message = flight[5 : 5 + int.from_bytes(flight[3:5], "big")]
    for sizes in ([1], [3, 1, 7], [40] * 20, [len(message) - 1]):
        assert sniff_tls(tls_records(message, sizes)).domain == "records.example.org"


def test_record_spanning_waits_for_last_fragment() -> None:
    # The name sits in the first record; the result still waits for the whole ClientHello.
    message = client_hello("span.example", padding=600)
    data = tls_records(message, [100, 200, 300])
    assert data.count(b"\x16\x03\x01") >= 4
    for n in range(len(data)):
        with pytest.raises(NeedMoreData):
            sniff_tls(data[:n])
    assert sniff_tls(data).domain == "span.example"


def test_trailing_bytes_after_client_hello_are_ignored() -> None:
    data = tls_records(client_hello("a.example")) + b"\x17\x03\x03\x00\x05hello"
    assert sniff_tls(data).domain == "a.example"


def test_non_handshake_record_inside_a_spanned_hello_is_no_clue() -> None:
    message = client_hello("a.example")
    data = tls_records(message[:20]) + b"\x15\x03\x03\x00\x02\x02\x28"
    with pytest.raises(NoClue):
        sniff_tls(data)


@pytest.mark.parametrize(
    "data",
    [
        b"\x17\x03\x03\x00\x10",  # application data
        b"\x16\x02\x00",  # major version 2
        b"\x16\x03\x01\x00\x00",  # empty handshake record
        b"GET / HTTP/1.1\r\n",
        tls_records(b"\x02\x00\x00\x04\x03\x03\x00\x00"),  # ServerHello
        tls_records(b"\x01\x00\x00\x04\x02\x00\x00\x00"),  # ClientHello, legacy_version major 2
        tls_records(b"\x01\x00\x00\x00"),  # empty ClientHello body
    ],
)
def test_not_a_client_hello(data: bytes) -> None:
    with pytest.raises(NoClue):
        sniff_tls(data)


def test_without_sni_is_no_clue() -> None:
    with pytest.raises(NoClue):
        sniff_tls(tls_records(client_hello(None, extensions=[(43, b"\x02\x03\x04")])))


def test_sni_not_first_extension_and_skipped_name_types() -> None:
    exts = [(10, b"\x00\x02\x00\x1d"), (0, server_name_extension(b"other", name_type=7)[1])]
    data = tls_records(client_hello(None, extensions=[*exts, server_name_extension(b"z.example")]))
    assert sniff_tls(data).domain == "z.example"


def test_name_with_control_byte_needs_more_data() -> None:
    # Xray's rule: a byte <= 0x20 in the name means the name was cut (QUIC gap), wait.
    data = tls_records(client_hello(None, extensions=[server_name_extension(b"ab\x00cd")]))
    with pytest.raises(NeedMoreData):
        sniff_tls(data)


@pytest.mark.parametrize("name", [b"trailing.dot.", b"", b"caf\xc3\xa9.example"])
def test_invalid_names_are_no_clue(name: bytes) -> None:
    data = tls_records(client_hello(None, extensions=[server_name_extension(name)]))
    with pytest.raises(NoClue):
        sniff_tls(data)


def test_malformed_complete_hello_is_no_clue() -> None:
    message = bytearray(client_hello("x.example"))
    message[4 + 2 + 32] = 33  # session id length > 32
    with pytest.raises(NoClue):
        sniff_tls(tls_records(bytes(message)))
    truncated = client_hello("x.example")[:-1]
    lying = b"\x01" + (len(truncated) - 4 - 2).to_bytes(3, "big") + truncated[4:-2]
    with pytest.raises(NoClue):  # complete by its header, but the extensions run past its end
        sniff_tls(tls_records(lying))


def test_registered_as_tcp_sniffer() -> None:
    assert TCP_SNIFFERS["tls"] is sniff_tls
