"""The sans-IO TLS 1.3 client against OpenSSL (``ssl.SSLObject`` server over memory BIOs).

OpenSSL is a real, independent peer: it checks our Finished and decrypts our records;
we check its CertificateVerify (ECDSA here; Ed25519 against Xray) and Finished.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from tunray.testing.certs import make_cert
from tunray_reality.client import AppData, HandshakeDone, PeerClosed, Tls13Client
from tunray_reality.errors import TlsAlert, TlsError
from tunray_reality.hello import CHROME_SUITES, GREASE, build_client_hello


class Server:
    def __init__(self, tmp: Path, server_order: bool = True) -> None:
        cert = make_cert(tmp, names=("decoy.test",))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if not server_order:  # OpenSSL then takes our first suite (AES-128-GCM) instead of AES-256-GCM
            ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(cert.cert_file, cert.key_file)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        self.der = cert.der
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=True)

    def step(self, data: bytes) -> bytes:
        self.incoming.write(data)
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        return self.outgoing.read()


def _connect(tmp: Path, seen: list[list[bytes]] | None = None, server_order: bool = True) -> tuple[Tls13Client, Server]:
    server = Server(tmp, server_order)
    key = X25519PrivateKey.generate()
    hello = build_client_hello("decoy.test", key.public_key().public_bytes_raw())
    certs: list[list[bytes]] = seen if seen is not None else []
    client = Tls13Client(hello.raw, key, certs.append)
    client.feed(server.step(client.data_to_send()))
    events = []
    while (event := client.next_event()) is not None:
        events.append(event)
    assert events == [HandshakeDone()]
    client.feed(server.step(client.data_to_send()))  # our CCS + Finished (OpenSSL verifies it); its tickets
    assert server.obj.version() == "TLSv1.3"
    return client, server


@pytest.mark.parametrize(("server_order", "suite"), [(True, "TLS_AES_256_GCM_SHA384"), (False, "TLS_AES_128_GCM_SHA256")])
def test_handshake_and_data_both_ways(tmp_path: Path, server_order: bool, suite: str) -> None:
    seen: list[list[bytes]] = []
    client, server = _connect(tmp_path, seen, server_order)
    assert seen == [[server.der]]
    assert client.alpn == "h2" and client.suite is not None and client.suite.name == suite
    server.incoming.write(client.seal(b"x" * 40000))  # three records
    assert server.obj.read(65536) + server.obj.read(65536) + server.obj.read(65536) == b"x" * 40000
    server.obj.write(b"pong")
    client.feed(server.outgoing.read())
    events = []
    while (event := client.next_event()) is not None:
        events.append(event)
    assert AppData(b"pong") in events  # (OpenSSL's session tickets are skipped)


def test_one_record_per_event_and_the_rest_stays_raw(tmp_path: Path) -> None:
    client, server = _connect(tmp_path)
    client.feed(server.outgoing.read())
    while client.next_event() is not None:  # tickets
        pass
    server.obj.write(b"first")
    first = server.outgoing.read()
    server.obj.write(b"second")
    second = server.outgoing.read()
    client.feed(first + second + b"\x00raw")
    assert client.next_event() == AppData(b"first")
    assert client.unprocessed() == second + b"\x00raw"  # Vision's raw switch point


def test_close_notify_is_a_clean_end_and_truncation_is_not(tmp_path: Path) -> None:
    client, server = _connect(tmp_path)
    client.feed(server.outgoing.read())
    while client.next_event() is not None:
        pass
    server.obj.write(b"bye")
    try:
        server.obj.unwrap()
    except ssl.SSLWantReadError:
        pass
    client.feed(server.outgoing.read())
    events = [client.next_event(), client.next_event()]
    assert events == [AppData(b"bye"), PeerClosed()]

    client2, server2 = _connect(tmp_path)
    client2.feed(server2.outgoing.read())
    client2.feed_eof()
    with pytest.raises(TlsError, match="without close_notify"):
        while client2.next_event() is not None:
            pass


def test_tampered_record_is_bad_record_mac(tmp_path: Path) -> None:
    client, server = _connect(tmp_path)
    client.feed(server.outgoing.read())
    while client.next_event() is not None:
        pass
    server.obj.write(b"data")
    record = bytearray(server.outgoing.read())
    record[-1] ^= 0x80
    client.feed(bytes(record))
    with pytest.raises(TlsAlert, match="bad_record_mac"):
        client.next_event()


def test_certificate_callback_refusal_stops_before_our_finished(tmp_path: Path) -> None:
    server = Server(tmp_path)
    key = X25519PrivateKey.generate()
    hello = build_client_hello("decoy.test", key.public_key().public_bytes_raw())

    def refuse(certs: list[bytes]) -> None:
        raise TlsError("not ours")

    client = Tls13Client(hello.raw, key, refuse)
    client.data_to_send()
    client.feed(server.step(hello_record(hello.raw)))
    with pytest.raises(TlsError, match="not ours"):
        while client.next_event() is not None:
            pass
    assert client.data_to_send() == b""


def hello_record(raw: bytes) -> bytes:
    return b"\x16\x03\x01" + len(raw).to_bytes(2, "big") + raw


def _parse_hello(raw: bytes) -> tuple[list[int], list[tuple[int, bytes]]]:
    pos = 4 + 2 + 32
    assert raw[pos] == 32 and raw[pos + 1 : pos + 33] == bytes(32)
    pos += 33
    n = int.from_bytes(raw[pos : pos + 2], "big")
    suites = [int.from_bytes(raw[pos + 2 + i : pos + 4 + i], "big") for i in range(0, n, 2)]
    pos += 2 + n
    assert raw[pos : pos + 2] == b"\x01\x00"
    pos += 2
    end = pos + 2 + int.from_bytes(raw[pos : pos + 2], "big")
    assert end == len(raw)
    pos += 2
    exts = []
    while pos < end:
        code = int.from_bytes(raw[pos : pos + 2], "big")
        m = int.from_bytes(raw[pos + 2 : pos + 4], "big")
        exts.append((code, raw[pos + 4 : pos + 4 + m]))
        pos += 4 + m
    assert pos == end
    return suites, exts


def test_hello_is_chrome_shaped() -> None:
    hello = build_client_hello("decoy.test", bytes(32))
    suites, exts = _parse_hello(hello.raw)
    assert suites[0] in GREASE and tuple(suites[1:]) == CHROME_SUITES
    codes = [c for c, _ in exts]
    assert codes[0] in GREASE and codes[-1] in GREASE and codes[0] != codes[-1]
    assert set(codes[1:-1]) == {0, 23, 65281, 10, 11, 35, 16, 5, 13, 18, 51, 45, 43, 27, 17613, 65037}
    body = dict(exts)
    assert body[16] == b"\x00\x0c\x02h2\x08http/1.1"
    assert body[0][5:] == b"decoy.test"
    assert body[43][1:3] in {g.to_bytes(2, "big") for g in GREASE} and body[43][3:] == b"\x03\x04\x03\x03"
    shares = body[51][2:]
    assert int.from_bytes(shares[:2], "big") in GREASE and shares[4:5] == b"\x00"
    assert shares[5:9] == b"\x00\x1d\x00\x20"
    orders = {tuple(c for c, _ in _parse_hello(build_client_hello("a.test", bytes(32)).raw)[1][1:-1]) for _ in range(8)}
    assert len(orders) > 1  # permuted per connection, as Chrome does


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(min_value=0, max_value=3))
def test_random_server_bytes_only_raise_tls_errors(data: bytes, prefix: int) -> None:
    key = X25519PrivateKey.generate()
    hello = build_client_hello("a.test", key.public_key().public_bytes_raw())
    client = Tls13Client(hello.raw, key, lambda certs: None)
    heads = [b"", b"\x16\x03\x03", b"\x16\x03\x03\x00\x30\x02\x00\x00\x2c", b"\x15\x03\x03\x00\x02"]
    client.feed(heads[prefix] + data)
    client.feed_eof()
    with pytest.raises(TlsError):
        while client.next_event() is not None:
            pass


def test_hello_record_is_read_by_a_tls_sniffer() -> None:
    """tunray's own TLS sniffer (as Xray's) finds the SNI in the ClientHello record we send."""
    from tunray.sniff.tls import sniff_tls

    key = X25519PrivateKey.generate()
    hello = build_client_hello("www.example.test", key.public_key().public_bytes_raw())
    client = Tls13Client(hello.raw, key, lambda certs: None)
    result = sniff_tls(client.data_to_send())
    assert result.domain == "www.example.test"
