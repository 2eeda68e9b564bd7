"""The transport layers: ``ws`` (``websocket``), ``httpupgrade``, ``grpc`` (``gun``), ``xhttp`` (``splithttp``).

Each is a :class:`tunray.transport.Layer`: ``validate`` parses its settings object at
config time (errors name e.g. ``outbounds[0].streamSettings.wsSettings.path``), the
constructor precomputes the options once per outbound, and ``wrap`` performs the
handshake over the stream below (TCP, or TLS over TCP) for each flow.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tunray.bytestream import ByteStream, RecordStream
from tunray.config.schema import Settings
from tunray.net.address import Destination
from tunray.transport import Layer

from tunray_transports.grpc import GrpcStream, open_grpc
from tunray_transports.http1 import HandshakeError
from tunray_transports.settings import grpc_options, httpupgrade_options, ws_options, xhttp_options
from tunray_transports.upgrade import UpgradedStream, open_httpupgrade
from tunray_transports.websocket import WebSocketStream, open_websocket
from tunray_transports.xhttp import open_xhttp
from tunray_transports.xhttp1 import open_xhttp1

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


class XhttpTransport(Layer):
    """HTTP/2 on one connection per flow; HTTP/1.1 (Xray's rule: no TLS, or alpn exactly
    ``["http/1.1"]``) with a second connection for uploads, hence ``needs_redial``."""

    name = "xhttp"
    aliases = ("splithttp",)
    needs_redial = True

    @classmethod
    def validate(cls, stream: Settings, path: str) -> None:
        xhttp_options(stream, path)

    def __init__(self, stream: Settings) -> None:
        super().__init__(stream)
        self.options, self.mode = xhttp_options(stream, STREAM_PATH)

    def _authority(self, dest: Destination) -> str:
        return self.options.host or (f"[{dest.host_text}]" if dest.is_ip and ":" in dest.host_text else dest.host_text)

    async def wrap(self, inner: ByteStream, dest: Destination) -> ByteStream:
        async def no_redial() -> ByteStream:
            raise HandshakeError("XHTTP over HTTP/1.1 needs a second connection (use it through an outbound)")

        return await self.wrap_redial(inner, dest, no_redial)

    async def wrap_redial(
        self, inner: ByteStream, dest: Destination, redial: Callable[[], Awaitable[ByteStream]]
    ) -> ByteStream:
        if self.options.http1:
            check_alpn(inner, "http/1.1")
            return await open_xhttp1(inner, self.options, self.mode, self._authority(dest), redial)
        check_alpn(inner, "h2")
        return await open_xhttp(inner, self.options, self.mode, self._authority(dest))
