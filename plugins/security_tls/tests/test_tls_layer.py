"""The ``security:tls`` layer against a Python TLS server on loopback."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from tunray.bytestream import ByteStream
from tunray.config.errors import ConfigError, NotSupported
from tunray.config.model import STREAM_SCHEMA
from tunray.net.address import Destination, Network, parse_host
from tunray.net.stream import open_stream
from tunray.plugin.manager import PluginManager
from tunray.testing.bytestream import Delegating, tcp_stream_pair
from tunray.testing.certs import SelfSigned, make_cert
from tunray_tls.layer import TlsSecurity, cert_matches
from tunray_tls.stream import TlsError, TlsStream, handshake

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _layer(tls: dict[str, Any]) -> TlsSecurity:
    stream = STREAM_SCHEMA.parse({"security": "tls", "tlsSettings": tls}, "streamSettings")
    TlsSecurity.validate(stream, "streamSettings")
    return TlsSecurity(stream)


def _server_ctx(cert: SelfSigned) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert.cert_file, cert.key_file)
    return ctx


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def _server_handshake(
    sctx: ssl.SSLContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    """A TLS server by hand (MemoryBIO), so a test controls every byte after the handshake."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = sctx.wrap_bio(incoming, outgoing, server_side=True)
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            if outgoing.pending:
                writer.write(outgoing.read())
            incoming.write(await reader.read(65536))
    writer.write(outgoing.read())
    return obj, incoming, outgoing


async def _dial(port: int, layer: TlsSecurity, host: str = "127.0.0.1") -> TlsStream:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    inner = await open_stream(sock)
    try:
        return await layer.wrap(inner, Destination(Network.TCP, parse_host(host), port))
    except BaseException:
        inner.abort()
        raise


async def _with_server(
    cert: SelfSigned | None, handler: Handler, body: Callable[[int], Awaitable[None]]
) -> None:
    """Serve *handler* on loopback (TLS unless *cert* is None) while *body* runs; reap handlers."""
    tasks: set[asyncio.Task[None]] = set()

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        await handler(reader, writer)

    server = await asyncio.start_server(tracked, "127.0.0.1", 0, ssl=_server_ctx(cert) if cert else None)
    port = server.sockets[0].getsockname()[1]
    try:
        await body(port)
    finally:
        server.close()
        await server.wait_closed()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=2)
            for t in pending:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def test_verified_by_ca_echoes_and_reports_version(tmp_path: Path) -> None:
    cert = make_cert(tmp_path)
    layer = _layer({"serverName": "vless.test", "certificates": [{"usage": "verify", "certificate": cert.cert_pem.splitlines()}]})

    async def body(port: int) -> None:
        stream = await _dial(port, layer)
        assert stream.tls_version == "TLSv1.3"
        payload = bytes(range(256)) * 4096  # 1 MiB
        got = bytearray()

        async def reader() -> None:
            while len(got) < len(payload):
                chunk = await stream.read(1 << 18)
                assert chunk
                got.extend(chunk)

        task = asyncio.create_task(reader())
        for i in range(0, len(payload), 100_000):
            await stream.write(payload[i : i + 100_000])
        await task
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        await stream.aclose()

    await _with_server(cert, _echo, body)


async def test_default_verification_refuses_a_self_signed_cert(tmp_path: Path) -> None:
    cert = make_cert(tmp_path)
    layer = _layer({"serverName": "vless.test"})

    async def body(port: int) -> None:
        with pytest.raises(TlsError, match="certificate refused"):
            await _dial(port, layer)

    await _with_server(cert, _echo, body)


async def test_wrong_name_is_refused_and_verify_by_name_accepts(tmp_path: Path) -> None:
    cert = make_cert(tmp_path)
    ca = [{"usage": "verify", "certificateFile": str(cert.cert_file)}]

    async def body(port: int) -> None:
        with pytest.raises(TlsError, match="certificate refused"):
            await _dial(port, _layer({"serverName": "other.test", "certificates": ca}))
        ok = await _dial(port, _layer({"serverName": "other.test", "verifyPeerCertByName": "x.test,vless.test", "certificates": ca}))
        await ok.aclose()
        with pytest.raises(TlsError, match="verifyPeerCertByName"):
            await _dial(port, _layer({"serverName": "other.test", "verifyPeerCertByName": ["x.test"], "certificates": ca}))

    await _with_server(cert, _echo, body)


async def test_pins_hex_base64_and_mismatch(tmp_path: Path) -> None:
    cert = make_cert(tmp_path)
    digest = hashlib.sha256(cert.der).digest()
    colon_hex = ":".join(f"{b:02X}" for b in digest)

    async def body(port: int) -> None:
        for pin in (digest.hex(), colon_hex, base64.b64encode(digest).decode(), base64.urlsafe_b64encode(digest).decode().rstrip("=")):
            s = await _dial(port, _layer({"pinnedPeerCertSha256": [pin]}))
            await s.write(b"ping")
            assert await s.read() == b"ping"
            await s.aclose()
        with pytest.raises(TlsError, match="pin mismatch"):
            await _dial(port, _layer({"pinnedPeerCertSha256": hashlib.sha256(b"x").hexdigest()}))

    await _with_server(cert, _echo, body)


async def test_max_version_12(tmp_path: Path) -> None:
    cert = make_cert(tmp_path)

    async def body(port: int) -> None:
        s = await _dial(port, _layer({"maxVersion": "1.2", "pinnedPeerCertSha256": cert.sha256_hex}))
        assert s.tls_version == "TLSv1.2"
        await s.aclose()

    await _with_server(cert, _echo, body)


async def test_write_eof_sends_close_notify_and_reading_continues(tmp_path: Path) -> None:
    cert = make_cert(tmp_path)

    sctx = _server_ctx(cert)

    async def half_close_then_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        obj, incoming, outgoing = await _server_handshake(sctx, reader, writer)
        data = b""
        try:
            while True:
                try:
                    chunk = obj.read(65536)
                except ssl.SSLWantReadError:
                    incoming.write(await reader.read(65536))
                    continue
                if not chunk:
                    break  # close_notify
                data += chunk
            obj.write(b"got:" + data)
            writer.write(outgoing.read())
            await writer.drain()
        finally:
            writer.close()

    async def body(port: int) -> None:
        s = await _dial(port, _layer({"pinnedPeerCertSha256": cert.sha256_hex}))
        await s.write(b"abc")
        await s.write_eof()
        await s.write_eof()  # idempotent
        got = b""
        while chunk := await s.read():
            got += chunk
        assert got == b"got:abc"
        with pytest.raises(ConnectionError):
            await s.write(b"more")
        await s.aclose()

    await _with_server(None, half_close_then_reply, body)


async def test_detach_raw_splits_at_the_record_boundary(tmp_path: Path) -> None:
    """The server sends one TLS record, then raw bytes on the same TCP connection
    (as a Vision server does after a direct switch): the client gets the record's
    plaintext from TLS and everything after it untouched."""
    cert = make_cert(tmp_path)
    sctx = _server_ctx(cert)
    raw_tail = b"\x17\x03\x03raw bytes that are not outer TLS" * 100

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        obj, _incoming, outgoing = await _server_handshake(sctx, reader, writer)
        try:
            obj.write(b"last record")
            writer.write(outgoing.read() + raw_tail)  # one TCP write: record then raw
            await writer.drain()
            await reader.read()
        finally:
            writer.close()

    async def body(port: int) -> None:
        s = await _dial(port, _layer({"pinnedPeerCertSha256": cert.sha256_hex}))
        got = b""
        while len(got) < len(b"last record"):
            got += await s.read_record(4)  # small reads leave plaintext inside the SSL object
            if got == b"last":
                break
        plain, raw, inner = s.detach_raw()
        assert got + plain == b"last record"
        rest = raw
        while len(rest) < len(raw_tail):
            chunk = await inner.read()
            assert chunk
            rest += chunk
        assert rest == raw_tail
        with pytest.raises(RuntimeError):
            await s.read()
        await s.aclose()

    await _with_server(None, server, body)


def test_config_errors_name_the_path(tmp_path: Path) -> None:
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"allowInsecure": True}, "streamSettings.tlsSettings.allowInsecure", "pinnedPeerCertSha256"),
        ({"pinnedPeerCertSha256": ["abcd"]}, "streamSettings.tlsSettings.pinnedPeerCertSha256[0]", "SHA-256"),
        ({"minVersion": "1.3", "maxVersion": "1.2"}, "streamSettings.tlsSettings.minVersion", "above"),
        ({"minVersion": "1.4"}, "streamSettings.tlsSettings.minVersion", "expected"),
        ({"certificates": [{"usage": "verify"}]}, "streamSettings.tlsSettings.certificates[0]", "certificateFile"),
    ]
    for tls, path, words in cases:
        with pytest.raises(ConfigError) as info:
            _layer(tls)
        assert info.value.path == path and words in info.value.message, str(info.value)
    with pytest.raises(NotSupported):
        _layer({"echConfigList": "AAAA"})
    # the fingerprint is accepted (ignored), allowInsecure false is fine
    _layer({"fingerprint": "chrome", "allowInsecure": False})


def test_registered_as_security_tls() -> None:
    assert PluginManager().registry.transport("security:tls") is TlsSecurity


def test_cert_matches_wildcards(tmp_path: Path) -> None:
    cert = make_cert(tmp_path, names=("*.example.com",), ips=("10.0.0.1",))
    assert cert_matches(cert.der, ("a.example.com",))
    assert not cert_matches(cert.der, ("a.b.example.com",))
    assert not cert_matches(cert.der, ("example.com",))
    assert cert_matches(cert.der, ("10.0.0.1",))
    assert not cert_matches(cert.der, ("10.0.0.2",))


def test_alpn_default_follows_the_transport() -> None:
    from tunray_tls.settings import parse_options

    assert parse_options(None, "tlsSettings", "raw").alpn == ("h2", "http/1.1")
    assert parse_options(None, "tlsSettings", "ws").alpn == ("http/1.1",)
    assert parse_options(None, "tlsSettings", "httpupgrade").alpn == ("http/1.1",)
    assert parse_options(None, "tlsSettings", "grpc").alpn == ("h2",)
    assert parse_options({"alpn": ["h3"]}, "tlsSettings", "grpc").alpn == ("h3",)


@pytest.mark.parametrize("version", ["1.3", "1.2"])
async def test_session_resumption_only_when_enabled(tmp_path: Path, version: str) -> None:
    """``enableSessionResumption`` offers the server's last ticket; without it every handshake is full."""
    cert = make_cert(tmp_path)
    verify = {"serverName": "vless.test", "maxVersion": version,
              "certificates": [{"usage": "verify", "certificate": cert.cert_pem.splitlines()}]}

    async def resumed(layer: TlsSecurity, port: int) -> list[bool]:
        out = []
        for _ in range(3):
            stream = await _dial(port, layer)
            await stream.write(b"ping")
            assert await stream.read(4) == b"ping"  # TLS 1.3: the tickets arrive before the echo
            assert stream.tls_version == f"TLSv{version}"
            out.append(stream._obj.session_reused)
            await stream.aclose()
        return out

    async def body(port: int) -> None:
        layer = _layer({**verify, "enableSessionResumption": True})
        assert await resumed(layer, port) == [False, True, True]
        assert layer.sessions is not None and list(layer.sessions) == ["vless.test"]
        plain = _layer(verify)
        assert await resumed(plain, port) == [False, False, False]
        assert plain.sessions is None

    await _with_server(cert, _echo, body)


class _Recorder(Delegating):
    """An inner stream that keeps each write, to see which bytes left together."""

    def __init__(self, inner: ByteStream) -> None:
        super().__init__(inner)
        self.writes: list[bytes] = []

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        await self.inner.write(data)


def _record_types(data: bytes) -> list[int]:
    """Content types of the TLS records in *data* (RFC 8446 5.1: type, version(2), length(2), fragment)."""
    types = []
    while data:
        types.append(data[0])
        data = data[5 + int.from_bytes(data[3:5], "big") :]
    return types


HANDSHAKE, CCS, APPLICATION_DATA = 0x16, 0x14, 0x17


async def test_client_finished_leaves_with_the_first_write(tmp_path: Path) -> None:
    """TLS 1.3: the client's Finished is not sent on its own; it goes in one write with the first
    request bytes, and the server's handshake completes only then."""
    cert = make_cert(tmp_path)
    sctx = _server_ctx(cert)
    async with tcp_stream_pair() as (a, b):
        accepting = asyncio.ensure_future(handshake(b, sctx, None, server_side=True))
        inner = _Recorder(a)
        client = await _layer({"pinnedPeerCertSha256": cert.sha256_hex}).wrap(inner, Destination.parse("127.0.0.1:443"))
        assert client.tls_version == "TLSv1.3"
        assert [_record_types(w) for w in inner.writes] == [[HANDSHAKE]]  # the ClientHello only
        await asyncio.sleep(0.05)
        assert not accepting.done()  # it never got the client's Finished
        await client.write(b"hello")
        assert len(inner.writes) == 2
        assert _record_types(inner.writes[1]) == [CCS, APPLICATION_DATA, APPLICATION_DATA]  # Finished, then data
        server = await asyncio.wait_for(accepting, 5)
        assert await server.read() == b"hello"
        await server.write(b"back")
        assert await client.read() == b"back"
        client.abort()
        server.abort()


async def test_a_client_that_reads_first_sends_its_finished(tmp_path: Path) -> None:
    """A server that speaks first (after its handshake) is not held up by the held Finished."""
    cert = make_cert(tmp_path)
    sctx = _server_ctx(cert)

    async def banner(b: ByteStream) -> TlsStream:
        server = await handshake(b, sctx, None, server_side=True)
        await server.write(b"220 ready")
        return server

    async with tcp_stream_pair() as (a, b):
        speaking = asyncio.ensure_future(banner(b))
        client = await _layer({"pinnedPeerCertSha256": cert.sha256_hex}).wrap(a, Destination.parse("127.0.0.1:443"))
        assert await asyncio.wait_for(client.read(), 5) == b"220 ready"
        server = await asyncio.wait_for(speaking, 5)
        client.abort()
        server.abort()
