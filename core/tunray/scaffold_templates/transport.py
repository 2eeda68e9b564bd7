"""Template: a transport layer (``streamSettings.network``): a handshake, then raw bytes."""

from __future__ import annotations

MODULE = "transport"

SOURCE = '''\
"""The ``$name`` transport: selected by ``streamSettings.network: "$name"``.

A :class:`tunray.transport.Layer` registered with ``registry.add_transport(cls)``
under its ``name``.  At config time tunray calls ``validate(stream_settings, path)``,
so a mistake in ``${name_id}Settings`` fails ``tunray run -test`` with its JSON path;
the constructor runs once per outbound; ``wrap(inner, dest)`` runs per connection
over the stream below (TCP, or TLS over TCP) and returns the stream above it.

The wire format is a minimal tunnel request (an HTTP-style head, as HTTPUpgrade
uses)::

    client:  CONNECT-TUNNEL <path> HTTP/1.1\\r\\nHost: <host>\\r\\n<headers>\\r\\n
    server:  HTTP/1.1 200 OK\\r\\n\\r\\n          (anything else refuses the tunnel)

and then raw bytes both ways.  The returned stream follows the
:class:`tunray.bytestream.ByteStream` contract: it owns *inner*; EOF, half-close and
a reset (:class:`~tunray.bytestream.StreamReset`) of *inner* pass through unchanged,
which ``tunray.testing.bytestream.check_byte_stream`` checks in ``tests/``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from tunray.bytestream import ByteStream
from tunray.config.errors import join
from tunray.config.schema import Field, ListOf, Schema, Settings, Str
from tunray.net.address import Destination
from tunray.transport import Layer

OK = b"HTTP/1.1 200 OK\\r\\n\\r\\n"
MAX_HEAD = 4096


class TunnelRefused(ConnectionError):
    """The server did not answer the tunnel request with 200."""


def _raw_section(stream_settings: Settings, key: str) -> tuple[str, Any]:
    """The raw ``<name>Settings`` object, matched case-insensitively as Xray's decoder does."""
    for k, v in stream_settings.raw.items():
        if str(k).lower() == key.lower():
            return str(k), v
    return key, None


class ${cls}Stream(ByteStream):
    """Raw bytes after the tunnel handshake; everything passes through to *inner*."""

    __slots__ = ("_inner", "_leftover")

    def __init__(self, inner: ByteStream, leftover: bytes) -> None:
        self._inner = inner
        self._leftover = leftover  # bytes that arrived right after the server's answer

    async def read(self, max_bytes: int = 65536) -> bytes:
        if self._leftover:
            data, self._leftover = self._leftover[:max_bytes], self._leftover[max_bytes:]
            return data
        return await self._inner.read(max_bytes)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.write(data)

    async def write_eof(self) -> None:
        await self._inner.write_eof()

    def abort(self) -> None:
        self._inner.abort()

    async def aclose(self) -> None:
        await self._inner.aclose()


class $cls(Layer):
    name: ClassVar[str] = "$name"
    settings_key: ClassVar[str] = "${name_id}Settings"
    settings_schema: ClassVar[Schema] = Schema(
        Field("path", Str(pattern=r"/.*"), default="/", doc="request path; must start with /"),
        Field("host", Str(), default="", doc="Host header; empty = the server address"),
        Field("headers", ListOf(Str()), default=[], doc="extra header lines"),
    )

    @classmethod
    def settings(cls, stream_settings: Settings, path: str) -> Settings:
        key, raw = _raw_section(stream_settings, cls.settings_key)
        return cls.settings_schema.parse(raw, join(path, key))

    @classmethod
    def validate(cls, stream_settings: Settings, path: str) -> None:
        """Raise :class:`~tunray.config.errors.ConfigError` (with its JSON path) for bad settings."""
        cls.settings(stream_settings, path)

    def __init__(self, stream: Settings) -> None:
        super().__init__(stream)
        self.options = self.settings(stream, "streamSettings")

    def request(self, dest: Destination) -> bytes:
        opts = self.options
        lines = [f"CONNECT-TUNNEL {opts.path} HTTP/1.1", f"Host: {opts.host or dest.netloc}", *opts.headers]
        return ("\\r\\n".join(lines) + "\\r\\n\\r\\n").encode()

    async def wrap(self, inner: ByteStream, dest: Destination) -> ${cls}Stream:
        await inner.write(self.request(dest))
        head = b""
        while b"\\r\\n\\r\\n" not in head:
            chunk = await inner.read(MAX_HEAD)
            if not chunk:
                raise TunnelRefused(f"$name: {dest.netloc} closed before answering the tunnel request")
            head += chunk
            if len(head) > MAX_HEAD:
                raise TunnelRefused(f"$name: {dest.netloc} sent an oversized answer")
        answer, _, leftover = head.partition(b"\\r\\n\\r\\n")
        if answer + b"\\r\\n\\r\\n" != OK:
            raise TunnelRefused(f"$name: {dest.netloc} refused the tunnel: {answer[:80]!r}")
        return ${cls}Stream(inner, leftover)
'''

TEST = '''\
"""$name: registration, config validation, and the byte-stream contract against a test server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tunray.bytestream import ByteStream
from tunray.config.errors import ConfigError
from tunray.config.model import build_config
from tunray.net.address import Destination
from tunray.plugin.manager import PluginManager
from tunray.testing.bytestream import check_byte_stream, tcp_stream_pair

from $pkg import transport


def config(stream: dict[str, Any]) -> dict[str, Any]:
    return {"outbounds": [{"protocol": "blackhole", "streamSettings": stream}]}


def layer(settings: dict[str, Any]) -> transport.$cls:
    pm = PluginManager()
    cfg = build_config(config({"network": "$name", "${name_id}Settings": settings}), pm.registry)
    stream = cfg.outbounds[0].stream
    assert stream is not None and stream.transport is transport.$cls
    return transport.$cls(stream.settings)


def test_registered_under_its_network_name() -> None:
    assert PluginManager().registry.transports["$name"] is transport.$cls


@pytest.mark.parametrize(
    ("settings", "field"),
    [({"path": "no-slash"}, "path"), ({"headers": "x"}, "headers")],
)
def test_bad_settings_name_the_json_path(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(config({"network": "$name", "${name_id}Settings": settings}), PluginManager().registry)
    assert info.value.path == f"outbounds[0].streamSettings.${name_id}Settings.{field}"


async def accept(server: ByteStream, answer: bytes = transport.OK) -> bytes:
    """The test server: read the tunnel request head, answer it; return the head."""
    head = b""
    while b"\\r\\n\\r\\n" not in head:
        chunk = await server.read(4096)
        assert chunk, "client closed before its request"
        head += chunk
    await server.write(answer)
    return head


async def test_request_shape_and_refusal() -> None:
    tunnel = layer({"path": "/t", "host": "cdn.test", "headers": ["X-Kit: 1"]})
    async with tcp_stream_pair() as (client, server):
        wrapped, head = await asyncio.gather(tunnel.wrap(client, Destination.parse("192.0.2.1:443")), accept(server))
        assert head == b"CONNECT-TUNNEL /t HTTP/1.1\\r\\nHost: cdn.test\\r\\nX-Kit: 1\\r\\n\\r\\n"
        await wrapped.aclose()
    async with tcp_stream_pair() as (client, server):
        with pytest.raises(transport.TunnelRefused):
            await asyncio.gather(
                tunnel.wrap(client, Destination.parse("192.0.2.1:443")), accept(server, b"HTTP/1.1 403 No\\r\\n\\r\\n")
            )


@pytest.mark.timeout(60)
async def test_byte_stream_contract() -> None:
    tunnel = layer({})

    @contextlib.asynccontextmanager
    async def pair() -> AsyncIterator[tuple[ByteStream, ByteStream]]:
        async with tcp_stream_pair() as (client, server):
            wrapped, _ = await asyncio.gather(tunnel.wrap(client, Destination.parse("127.0.0.1:80")), accept(server))
            yield wrapped, server

    await check_byte_stream(pair)
'''

FILES = {"$pkg/transport.py": SOURCE, "tests/test_${name_id}.py": TEST}
