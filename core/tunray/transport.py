r"""Transports and security layers under a protocol (Xray ``streamSettings``).

A connection to a server is built bottom-up, as Xray builds it: the dialer's TCP
socket (``sockopt`` applied), then the *security* layer named by
``streamSettings.security`` (``tls``, later ``reality``), then the *transport* named by
``streamSettings.network`` (``ws``, ``httpupgrade``, ``grpc``; ``raw`` is the socket
itself).  Each layer is a class registered by a plugin::

    registry.add_transport(WebSocketTransport)      # name = "ws", aliases ("websocket",)
    registry.add_transport(TlsSecurity)             # name = "security:tls"

so a third party adds a transport without touching any protocol's code.  A protocol
outbound calls :meth:`Dialable.connect` and gets a :class:`~tunray.bytestream.ByteStream`.

Layer contract: ``validate(stream_settings, path)`` is a classmethod run at config
time (raise :class:`~tunray.config.ConfigError` naming the path);
``__init__(stream_settings)`` precomputes; ``await wrap(inner, dest)`` performs the
layer's handshake over *inner* and returns the new stream, raising ``ConnectionError``
(or a subclass) on failure.  Both are :class:`~tunray.bytestream.ByteStream`\ s and the
returned one follows that contract: it owns *inner* and closes it, a reset of *inner*
is a reset of the new stream (never an EOF), and it implements ``write_eof`` as the
transport's half-close (or sets ``half_close = False``).  A security layer whose
records XTLS Vision can use returns a :class:`~tunray.bytestream.RecordStream`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, ClassVar

from tunray.bytestream import ByteStream
from tunray.config.schema import Settings
from tunray.net.address import Destination
from tunray.net.stream import open_stream

if TYPE_CHECKING:
    from tunray.config.model import StreamConfig
    from tunray.runtime import Runtime


class Layer(ABC):
    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def validate(cls, stream: Settings, path: str) -> None:
        """Check this layer's part of ``streamSettings``; raise ConfigError with its path."""

    def __init__(self, stream: Settings) -> None:
        self.stream = stream

    #: A layer that needs more than one connection to the server per flow (XHTTP over
    #: HTTP/1.1: a download request and upload requests on separate connections) sets
    #: this; :class:`Dialable` then calls :meth:`wrap_redial` instead of :meth:`wrap`.
    needs_redial: ClassVar[bool] = False

    @abstractmethod
    async def wrap(self, inner: ByteStream, dest: Destination) -> ByteStream:
        """Handshake over *inner*; return the stream above it (which owns *inner*)."""

    async def wrap_redial(
        self, inner: ByteStream, dest: Destination, redial: Callable[[], Awaitable[ByteStream]]
    ) -> ByteStream:
        """:meth:`wrap`, plus *redial*: each call dials one more connection to the same
        server through every layer below this one (the caller owns what it returns)."""
        return await self.wrap(inner, dest)


def _layers(cfg: StreamConfig | None) -> list[Layer]:
    if cfg is None:
        return []
    layers: list[Layer] = []
    if cfg.security_layer is not None:
        layers.append(cfg.security_layer(cfg.settings))
    if cfg.transport is not None:
        layers.append(cfg.transport(cfg.settings))
    elif _http_header(cfg.settings):
        from tunray.net.httpheader import HttpHeaderLayer

        layers.append(HttpHeaderLayer(cfg.settings))
    return layers


def _http_header(settings: Settings) -> bool:
    """``rawSettings.header.type == "http"`` (raw TCP with Xray's HTTP header obfuscation)."""
    raw = settings.get("rawSettings")
    header = raw.header if raw is not None else None
    return header is not None and str(header.type).lower() == "http"


class Dialable:
    """Precomputed layers for one outbound's ``streamSettings``; ``connect`` per flow."""

    __slots__ = ("_layers", "_opts", "_runtime", "_send_through")

    def __init__(self, runtime: Runtime, cfg: StreamConfig | None, send_through: str = "") -> None:
        self._runtime = runtime
        self._layers = _layers(cfg)
        self._opts = cfg.settings.sockopt if cfg is not None else None
        self._send_through = send_through

    async def connect(
        self, server: Destination, *, timeout: float, strategy: str = "AsIs", depth: int | None = None
    ) -> ByteStream:
        """A new connection through the first *depth* layers (all by default)."""
        sock = await self._runtime.dialer.connect_tcp(
            server, opts=self._opts, strategy=strategy, send_through=self._send_through, timeout=timeout
        )
        stream: ByteStream = await open_stream(sock)
        try:
            for i, layer in enumerate(self._layers[:depth]):
                if layer.needs_redial:

                    def redial(i: int = i) -> Awaitable[ByteStream]:
                        return self.connect(server, timeout=timeout, strategy=strategy, depth=i)

                    stream = await layer.wrap_redial(stream, server, redial)
                else:
                    stream = await layer.wrap(stream, server)
        except BaseException:
            stream.abort()
            raise
        return stream
