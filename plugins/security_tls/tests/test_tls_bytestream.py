"""``check_byte_stream`` on the TLS layer: tunray's TLS client against a TLS server stream.

The pair is one loopback TCP connection with :class:`~tunray_tls.stream.TlsStream` on
both ends (the server end runs the same code with ``server_side=True`` and OpenSSL's
server state machine), for TLS 1.3 and TLS 1.2.  A reset is a TCP RST underneath.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tunray.bytestream import ByteStream, RecordStream
from tunray.config.model import STREAM_SCHEMA
from tunray.net.address import Destination
from tunray.testing.bytestream import check_byte_stream, tcp_stream_pair
from tunray.testing.certs import make_cert
from tunray_tls.layer import TlsSecurity
from tunray_tls.stream import handshake


@pytest.mark.parametrize("version", ["TLSv1.3", "TLSv1.2"])
@pytest.mark.timeout(90)
async def test_tls_stream_conforms(tmp_path: Path, version: str) -> None:
    cert = make_cert(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert.cert_file, cert.key_file)
    if version == "TLSv1.2":
        server_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    settings = STREAM_SCHEMA.parse(
        {"security": "tls", "tlsSettings": {"serverName": "vless.test", "pinnedPeerCertSha256": cert.sha256_hex}},
        "streamSettings",
    )
    layer = TlsSecurity(settings)

    @contextlib.asynccontextmanager
    async def pair() -> AsyncIterator[tuple[ByteStream, ByteStream]]:
        async with tcp_stream_pair() as (a, b):
            accepting = asyncio.ensure_future(handshake(b, server_ctx, None, server_side=True))
            client = await layer.wrap(a, Destination.parse("127.0.0.1:443"))
            # the client's last handshake flight leaves with its first write: one byte
            # completes the server's handshake before the suite starts
            await client.write(b"!")
            server = await accepting
            assert await server.read(1) == b"!"
            assert isinstance(client, RecordStream) and client.tls_version == version
            try:
                yield client, server
            finally:
                client.abort()
                server.abort()

    await check_byte_stream(pair)
