"""The three transport layers: ``ws`` (``websocket``), ``httpupgrade`` and ``grpc`` (``gun``).

Each is a :class:`tunray.transport.Layer`: ``validate`` parses its settings object at
config time (errors name e.g. ``outbounds[0].streamSettings.wsSettings.path``), the
constructor precomputes the options once per outbound, and ``wrap`` performs the
handshake over the stream below (TCP, or TLS over TCP) for each flow.
"""

from __future__ import annotations

from tunray.bytestream import ByteStream, RecordStream
from tunray.config.schema import Settings
from tunray.net.address import Destination
from tunray.transport import Layer

from tunray_transports.grpc import GrpcStream, open_grpc
from tunray_transports.http1 import HandshakeError
from tunray_transports.settings import grpc_options, httpupgrade_options, ws_options
from tunray_transports.upgrade import UpgradedStream, open_httpupgrade
from tunray_transports.websocket import WebSocketStream, open_websocket

STREAM_PATH = "streamSettings"


def check_alpn(inner: ByteStream, want: str) -> None:
    """Fail clearly when TLS below negotiated an ALPN protocol this transport cannot speak.

    Xray offers only ``http/1.1`` under ws/httpupgrade and only ``h2`` under grpc when
    ``tlsSettings.alpn`` is unset; a TLS layer that offers both lets the server choose.
    """
    alpn = inner.alpn if isinstance(inner, RecordStream) else None
    if alpn and alpn != want:
        raise HandshakeError(
            f"TLS negotiated ALPN {alpn!r} but this transport needs {want!r} "
            f'(set streamSettings.tlsSettings.alpn to ["{want}"])'
        )


class WebSocketTransport(Layer):
    name = "ws"
    aliases = ("websocket",)

    @classmethod
    def validate(cls, stream: Settings, path: str) -> None:
        ws_options(stream, path)

    def __init__(self, stream: Settings) -> None:
        super().__init__(stream)
        self.options = ws_options(stream, STREAM_PATH)

    async def wrap(self, inner: ByteStream, dest: Destination) -> WebSocketStream:
        check_alpn(inner, "http/1.1")
        return await open_websocket(inner, self.options, self.options.host_for(dest))


class HttpUpgradeTransport(Layer):
    name = "httpupgrade"

    @classmethod
    def validate(cls, stream: Settings, path: str) -> None:
        httpupgrade_options(stream, path)

    def __init__(self, stream: Settings) -> None:
        super().__init__(stream)
        self.options = httpupgrade_options(stream, STREAM_PATH)

    async def wrap(self, inner: ByteStream, dest: Destination) -> UpgradedStream:
        check_alpn(inner, "http/1.1")
        return await open_httpupgrade(inner, self.options, self.options.host_for(dest))


class GrpcTransport(Layer):
    name = "grpc"
    aliases = ("gun",)

    @classmethod
    def validate(cls, stream: Settings, path: str) -> None:
        grpc_options(stream, path)

    def __init__(self, stream: Settings) -> None:
        super().__init__(stream)
        self.options = grpc_options(stream, STREAM_PATH)

    async def wrap(self, inner: ByteStream, dest: Destination) -> GrpcStream:
        check_alpn(inner, "h2")
        return await open_grpc(inner, self.options, self.options.authority_for(dest))
