"""``RealityStream`` passes the core ByteStream conformance suite (EOF vs reset, half-close, backpressure).

The peer is OpenSSL's TLS 1.3 server (``ssl.SSLObject`` over memory BIOs on a loopback
socket stream).  Only the certificate check differs from REALITY (any certificate is
accepted here); the record layer, close_notify and reset handling are the ones a
REALITY connection uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from tunray.bytestream import ByteStream, StreamClosed
from tunray.testing.bytestream import PairFactory, check_byte_stream, tcp_stream_pair
from tunray.testing.certs import make_cert
from tunray_reality.client import Tls13Client
from tunray_reality.hello import build_client_hello
from tunray_reality.stream import run_handshake


class SslServerStream(ByteStream):
    """The server end: OpenSSL over a socket stream, as a ByteStream (test peer)."""

    def __init__(self, inner: ByteStream, ctx: ssl.SSLContext) -> None:
        self.inner = inner
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.write_closed = False

    async def _flush(self) -> None:
        if self.outgoing.pending:
            await self.inner.write(self.outgoing.read())

    async def handshake(self) -> None:
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                data = await self.inner.read(1 << 16)
                if not data:
                    raise ConnectionError("closed in the handshake") from None
                self.incoming.write(data)
        await self._flush()

    async def read(self, max_bytes: int = 65536) -> bytes:
        while True:
            try:
                data = self.obj.read(max_bytes)
                await self._flush()
                return data
            except ssl.SSLWantReadError:
                await self._flush()
                raw = await self.inner.read(1 << 18)
                if not raw:
                    return b""
                self.incoming.write(raw)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.write_closed:
            raise StreamClosed("closed")
        self.obj.write(data)
        await self._flush()

    async def write_eof(self) -> None:
        if self.write_closed:
            return
        self.write_closed = True
        with contextlib.suppress(ssl.SSLError):
            self.obj.unwrap()
        with contextlib.suppress(ConnectionError):
            await self._flush()

    def abort(self) -> None:
        self.inner.abort()

    async def aclose(self) -> None:
        await self.inner.aclose()


def _pair_factory(tmp: Path) -> PairFactory:
    cert = make_cert(tmp, names=("decoy.test",))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert.cert_file, cert.key_file)
    ctx.num_tickets = 0

    @contextlib.asynccontextmanager
    async def pair() -> AsyncIterator[tuple[ByteStream, ByteStream]]:
        async with tcp_stream_pair() as (a, b):
            key = X25519PrivateKey.generate()
            hello = build_client_hello("decoy.test", key.public_key().public_bytes_raw())
            server = SslServerStream(b, ctx)
            client_task = asyncio.ensure_future(run_handshake(a, Tls13Client(hello.raw, key, lambda certs: None)))
            await server.handshake()
            client = await client_task
            yield client, server

    return pair


async def test_reality_stream_conformance(tmp_path: Path) -> None:
    await check_byte_stream(_pair_factory(tmp_path), backpressure_limit=24 << 20)
