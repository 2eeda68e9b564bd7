"""Template: a security layer (``streamSettings.security``): TLS over ``ssl.MemoryBIO``."""

from __future__ import annotations

MODULE = "security"

SOURCE = '''\
"""The ``$name`` security layer: selected by ``streamSettings.security: "$name"``.

A security layer is a :class:`tunray.transport.Layer` registered with
``registry.add_transport(cls)`` under the name ``"security:$name"``; Xray builds a
connection socket → security → transport, and so does tunray.  This one is TLS
through the standard library's ``ssl.MemoryBIO``/``SSLObject`` (OpenSSL), verifying
the server against the CA file in ``${name_id}Settings.caFile`` and ``serverName``.

The stream follows the :class:`tunray.bytestream.ByteStream` contract: the peer's
``close_notify`` (or a bare FIN, as Go peers send) is EOF; ``write_eof`` sends
``close_notify`` (TLS 1.3 lets the peer keep sending); a reset of the connection
underneath, or a TLS alert, raises :class:`~tunray.bytestream.StreamReset`.
``tests/`` runs ``tunray.testing.bytestream.check_byte_stream`` against it.  (A layer
whose records XTLS Vision may use implements :class:`tunray.bytestream.RecordStream`.)
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Any, ClassVar

from tunray.bytestream import ByteStream, StreamClosed, StreamReset
from tunray.config.errors import ConfigError, join
from tunray.config.schema import Field, Schema, Settings, Str
from tunray.net.address import Destination
from tunray.transport import Layer

CHUNK = 65536


class HandshakeFailed(ConnectionError):
    """The TLS handshake failed (the message says why)."""


def _raw_section(stream_settings: Settings, key: str) -> tuple[str, Any]:
    for k, v in stream_settings.raw.items():
        if str(k).lower() == key.lower():
            return str(k), v
    return key, None


class ${cls}Stream(ByteStream):
    """TLS over *inner*; build with :func:`handshake`."""

    __slots__ = ("_closed", "_in", "_inner", "_obj", "_out", "_write_closed")

    def __init__(self, inner: ByteStream, obj: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> None:
        self._inner = inner
        self._obj = obj
        self._in = incoming
        self._out = outgoing
        self._closed = False
        self._write_closed = False

    @property
    def version(self) -> str:
        return self._obj.version() or ""

    async def _flush(self) -> None:
        if self._out.pending:
            await self._inner.write(self._out.read())

    async def read(self, max_bytes: int = 65536) -> bytes:
        while not self._closed:
            try:
                data = self._obj.read(max_bytes)
            except ssl.SSLWantReadError:
                await self._flush()
                chunk = await self._inner.read(CHUNK)  # a reset underneath raises StreamReset
                if chunk:
                    self._in.write(chunk)
                else:
                    self._in.write_eof()
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            except ssl.SSLError as exc:
                raise StreamReset(f"TLS: {exc.reason or exc}") from exc
            await self._flush()
            return data
        return b""

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed or self._write_closed:
            raise StreamClosed("TLS stream closed for writing")
        try:
            self._obj.write(data)
        except ssl.SSLError as exc:
            raise StreamReset(f"TLS: {exc.reason or exc}") from exc
        await self._flush()

    async def write_eof(self) -> None:
        if self._closed or self._write_closed:
            return
        self._write_closed = True
        with contextlib.suppress(ssl.SSLError):
            self._obj.unwrap()  # queues close_notify; the peer's is not awaited
        with contextlib.suppress(ConnectionError):
            await self._flush()

    def abort(self) -> None:
        self._closed = True
        self._inner.abort()

    async def aclose(self) -> None:
        if self._closed:
            return
        await self.write_eof()
        self._closed = True
        await self._inner.aclose()


async def handshake(
    inner: ByteStream, ctx: ssl.SSLContext, server_name: str | None, *, server_side: bool = False
) -> ${cls}Stream:
    """Run the TLS handshake over *inner* (the server side too, for tests)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_side=server_side, server_hostname=server_name)
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            if outgoing.pending:
                await inner.write(outgoing.read())
            data = await inner.read(CHUNK)
            if not data:
                raise HandshakeFailed("connection closed during the TLS handshake") from None
            incoming.write(data)
        except ssl.SSLError as exc:
            raise HandshakeFailed(f"TLS handshake failed: {exc.reason or exc}") from None
    if outgoing.pending:
        await inner.write(outgoing.read())
    return ${cls}Stream(inner, obj, incoming, outgoing)


class $cls(Layer):
    name: ClassVar[str] = "security:$name"
    settings_key: ClassVar[str] = "${name_id}Settings"
    settings_schema: ClassVar[Schema] = Schema(
        Field("serverName", Str(), default="", doc="name to verify (SNI); empty = the server address"),
        Field("caFile", Str(non_empty=True), doc="PEM file of the CA that signs the server certificate"),
    )

    @classmethod
    def settings(cls, stream_settings: Settings, path: str) -> Settings:
        key, raw = _raw_section(stream_settings, cls.settings_key)
        return cls.settings_schema.parse(raw, join(path, key))

    @classmethod
    def validate(cls, stream_settings: Settings, path: str) -> None:
        cls.settings(stream_settings, path)

    def __init__(self, stream: Settings) -> None:
        super().__init__(stream)
        self.options = self.settings(stream, "streamSettings")
        try:
            self.context = ssl.create_default_context(cafile=self.options.caFile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"streamSettings.{self.settings_key}.caFile", f"cannot load: {exc}") from None

    async def wrap(self, inner: ByteStream, dest: Destination) -> ${cls}Stream:
        return await handshake(inner, self.context, self.options.serverName or dest.host_text)
'''

TEST = '''\
"""$name: registration, config validation, and the byte-stream contract against a TLS server."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tunray.bytestream import ByteStream
from tunray.config.errors import ConfigError
from tunray.config.model import build_config
from tunray.net.address import Destination
from tunray.plugin.manager import PluginManager
from tunray.testing.bytestream import check_byte_stream, tcp_stream_pair
from tunray.testing.certs import make_cert

from $pkg import security


def config(stream: dict[str, Any]) -> dict[str, Any]:
    return {"outbounds": [{"protocol": "blackhole", "streamSettings": stream}]}


def layer(settings: dict[str, Any]) -> security.$cls:
    cfg = build_config(config({"security": "$name", "${name_id}Settings": settings}), PluginManager().registry)
    stream = cfg.outbounds[0].stream
    assert stream is not None and stream.security_layer is security.$cls
    return security.$cls(stream.settings)


def test_registered_as_a_security_layer() -> None:
    assert PluginManager().registry.transports["security:$name"] is security.$cls


def test_missing_ca_file_names_the_json_path() -> None:
    with pytest.raises(ConfigError) as info:
        build_config(config({"security": "$name", "${name_id}Settings": {}}), PluginManager().registry)
    assert info.value.path == "outbounds[0].streamSettings.${name_id}Settings.caFile"


def server_context(tmp_path: Path) -> tuple[ssl.SSLContext, str]:
    cert = make_cert(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert.cert_file, cert.key_file)
    return ctx, str(cert.cert_file)


async def test_wrong_name_is_refused(tmp_path: Path) -> None:
    ctx, ca = server_context(tmp_path)
    tls = layer({"caFile": ca, "serverName": "other.test"})
    async with tcp_stream_pair() as (client, server):
        server_side = asyncio.ensure_future(security.handshake(server, ctx, None, server_side=True))
        with pytest.raises(security.HandshakeFailed):
            await tls.wrap(client, Destination.parse("127.0.0.1:443"))
        client.abort()  # as tunray's dialer does after a failed wrap
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(server_side, 5)


@pytest.mark.timeout(60)
async def test_byte_stream_contract(tmp_path: Path) -> None:
    ctx, ca = server_context(tmp_path)
    tls = layer({"caFile": ca, "serverName": "vless.test"})

    @contextlib.asynccontextmanager
    async def pair() -> AsyncIterator[tuple[ByteStream, ByteStream]]:
        async with tcp_stream_pair() as (client, server):
            wrapped, peer = await asyncio.gather(
                tls.wrap(client, Destination.parse("127.0.0.1:443")), security.handshake(server, ctx, None, server_side=True)
            )
            assert wrapped.version == "TLSv1.3"
            yield wrapped, peer

    await check_byte_stream(pair)
'''

FILES = {"$pkg/security.py": SOURCE, "tests/test_${name_id}.py": TEST}
