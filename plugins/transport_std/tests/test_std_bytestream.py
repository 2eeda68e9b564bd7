"""``check_byte_stream`` on the three transports' client streams (and TLS under them).

Each pair is one loopback TCP connection: the transport's client (as
:class:`tunray.transport.Dialable` builds it, via the layer's ``wrap``) against the
server ends of :mod:`std_peers`.  WebSocket and gRPC have no half-close
(``half_close = False``); HTTPUpgrade's is TCP's own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from std_peers import GrpcServerStream, WsServerStream, accept_httpupgrade
from tunray.bytestream import ByteStream
from tunray.config.model import STREAM_SCHEMA
from tunray.net.address import Destination
from tunray.testing.bytestream import check_byte_stream, tcp_stream_pair
from tunray_transports.layers import GrpcTransport, HttpUpgradeTransport, WebSocketTransport

CASES: dict[str, tuple[Any, dict[str, Any], Callable[[ByteStream], Awaitable[ByteStream]]]] = {
    "ws": (WebSocketTransport, {"network": "ws", "wsSettings": {"path": "/ray"}}, WsServerStream.accept),
    "httpupgrade": (HttpUpgradeTransport, {"network": "httpupgrade"}, accept_httpupgrade),
    "grpc": (GrpcTransport, {"network": "grpc", "grpcSettings": {"serviceName": "svc"}}, GrpcServerStream.accept),
}


@pytest.mark.parametrize("network", sorted(CASES))
@pytest.mark.timeout(90)
async def test_transport_stream_conforms(network: str) -> None:
    layer_cls, raw, accept = CASES[network]
    layer = layer_cls(STREAM_SCHEMA.parse(raw, "streamSettings"))

    @contextlib.asynccontextmanager
    async def pair() -> AsyncIterator[tuple[ByteStream, ByteStream]]:
        async with tcp_stream_pair() as (a, b):
            client, server = await asyncio.gather(layer.wrap(a, Destination.parse("127.0.0.1:80")), accept(b))
            try:
                yield client, server
            finally:
                client.abort()
                server.abort()

    await check_byte_stream(pair, half_close=layer_cls is HttpUpgradeTransport)
