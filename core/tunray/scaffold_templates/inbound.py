"""Template: a TCP "forward" inbound (dokodemo-style) and its end-to-end tests."""

from __future__ import annotations

MODULE = "inbound"

SOURCE = '''\
"""The ``$name`` inbound: listen on TCP and forward every connection to one address.

Like Xray's dokodemo-door with a fixed destination: each accepted connection
becomes a flow to ``settings.address:settings.port`` and is handed to the
dispatcher, which routes it to an outbound and returns when the flow is over.
The accepted socket is already connected, so the link's handshake is eager
(``accept`` is a no-op).  ``stop`` closes the listener, cancels the open flows and
waits for them.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import TYPE_CHECKING, Any

from loguru import logger
from tunray.config.errors import ConfigError, join
from tunray.config.schema import Field, Int, Schema, Str
from tunray.inbound import Inbound
from tunray.link import ByteLink, LinkClosed
from tunray.net.address import Destination, Network, parse_host
from tunray.net.stream import SocketStream, open_stream

if TYPE_CHECKING:
    from tunray.config.model import Config

#: accept() failures that mean "out of resources for now": back off instead of dying.
_BACKOFF = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class _SocketLink(ByteLink):
    """An accepted TCP connection as the app's side of a flow."""

    __slots__ = ("_closed", "_stream")

    def __init__(self, stream: SocketStream) -> None:
        self._stream = stream
        self._closed = False

    async def read(self, max_bytes: int = 65536) -> bytes:
        if self._closed:
            return b""
        return await self._stream.read(max_bytes)  # the client's RST raises StreamReset

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise LinkClosed("link closed")
        try:
            await self._stream.write(data)
        except ConnectionError as exc:
            raise LinkClosed(str(exc)) from None

    async def write_eof(self) -> None:
        if not self._closed:
            await self._stream.write_eof()

    async def accept(self) -> None:
        pass  # the kernel completed the handshake before accept() returned

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            self._stream.abort()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._stream.aclose()


def single_port(value: Any) -> int | None:
    """The listening port as an int, or None when *value* is not one port (a range, a list)."""
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def check_config(config: Config) -> None:
    """Called from the ``tunray_configure`` hook: this inbound listens on exactly one port."""
    for inbound in config.inbounds:
        if inbound.protocol == "$name" and single_port(inbound.port) is None:
            raise ConfigError(join(inbound.path, "port"), "the $name inbound listens on one port, not a range")


class $cls(Inbound):
    protocol = "$name"
    settings_schema = Schema(
        Field("address", Str(non_empty=True), doc="host every connection is forwarded to"),
        Field("port", Int(min=1, max=65535), doc="port every connection is forwarded to"),
        Field("userLevel", Int(min=0), default=0, doc="policy level of these flows"),
    )

    def __init__(self, config: Any, runtime: Any) -> None:
        super().__init__(config, runtime)
        self.user_level = self.settings.userLevel
        self.target = Destination(Network.TCP, parse_host(self.settings.address), self.settings.port)
        self.sockname: tuple[Any, ...] | None = None
        self._listener: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._flows: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        host = self.config.listen or "0.0.0.0"
        port = single_port(self.config.port) or 0
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(512)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._listener = sock
        self.sockname = sock.getsockname()
        self._acceptor = asyncio.get_running_loop().create_task(self._accept_loop(sock))

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(listener)
            except OSError as exc:
                if exc.errno in _BACKOFF:
                    logger.warning("{}: accept: {}; backing off", self.tag or self.protocol, exc)
                    await asyncio.sleep(0.1)
                    continue
                raise
            task = loop.create_task(self._serve(conn, peer))
            self._flows.add(task)
            task.add_done_callback(self._flows.discard)

    async def _serve(self, conn: socket.socket, peer: tuple[Any, ...]) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            stream = await open_stream(conn)
        except BaseException:
            conn.close()
            raise
        source = Destination(Network.TCP, parse_host(str(peer[0])), int(peer[1]))
        ctx = self.new_context(source, self.target)
        # The dispatcher owns the link from here on: it closes it in every case.
        await self.runtime.dispatcher.dispatch_link(ctx, self.target, _SocketLink(stream))

    async def stop(self) -> None:
        if self._acceptor is not None:
            self._acceptor.cancel()
            await asyncio.gather(self._acceptor, return_exceptions=True)
            self._acceptor = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        flows = list(self._flows)
        for task in flows:
            task.cancel()
        if flows:
            await asyncio.gather(*flows, return_exceptions=True)
'''

TYPE_IMPORTS = "    from tunray.config.model import Config\n"

PLUGIN_EXTRA = '''\


@hookimpl
def tunray_configure(config: Config) -> None:
    from $pkg.inbound import check_config

    check_config(config)
'''

TEST = '''\
"""$name end to end: a real TCP client, the inbound, the dispatcher and an outbound.

The outbound here is a tiny echo registered by the test itself, so the suite needs
nothing but tunray: what the client sends must come back, and the flow must carry
the configured destination.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from tunray import hookimpl
from tunray.config.errors import ConfigError
from tunray.config.model import build_config
from tunray.link import ByteLink, PacketLink
from tunray.net.address import Destination, Network, parse_host
from tunray.outbound import Outbound
from tunray.plugin.manager import PluginManager
from tunray.session import FlowContext
from tunray.testing.harness import running

SEEN: list[FlowContext] = []


class EchoOutbound(Outbound):
    protocol = "test-echo"

    async def process(self, ctx: FlowContext, link: ByteLink | PacketLink) -> None:
        assert isinstance(link, ByteLink)
        SEEN.append(ctx)
        await link.accept()
        while data := await link.read():
            await link.write(data)
        await link.write_eof()


class EchoPlugin:
    @staticmethod
    @hookimpl
    def tunray_register_types(registry: Any) -> None:
        registry.add_outbound(EchoOutbound)


def config(outbound: str, **inbound: Any) -> dict[str, Any]:
    ib = {"protocol": "$name", "listen": "127.0.0.1", "port": 0, "settings": {"address": "192.0.2.7", "port": 443}}
    ib.update(inbound)
    return {"log": {"loglevel": "none", "access": "none"}, "inbounds": [ib], "outbounds": [{"protocol": outbound}]}


def bound_port(rt: Any) -> int:
    return int(rt.inbounds[0].sockname[1])


async def test_connections_are_forwarded_through_the_dispatcher() -> None:
    SEEN.clear()
    async with running(config("test-echo"), extra=[EchoPlugin()]) as rt:
        port = bound_port(rt)

        async def one(i: int) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            payload = bytes([i]) * (100_000 + i)
            writer.write(payload)
            writer.write_eof()
            got = await reader.read(-1)
            writer.close()
            await writer.wait_closed()
            assert got == payload

        await asyncio.gather(*(one(i) for i in range(10)))
    assert len(SEEN) == 10
    assert {ctx.target for ctx in SEEN} == {Destination(Network.TCP, parse_host("192.0.2.7"), 443)}
    assert all(ctx.source.host == parse_host("127.0.0.1") for ctx in SEEN)


async def test_a_dropped_flow_resets_the_client_connection() -> None:
    async with running(config("blackhole")) as rt:
        reader, writer = await asyncio.open_connection("127.0.0.1", bound_port(rt))
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(-1), 5)
        writer.close()
        with contextlib.suppress(ConnectionResetError):
            await writer.wait_closed()


async def test_stop_resets_flows_still_open() -> None:
    async with running(config("test-echo"), extra=[EchoPlugin()]) as rt:
        reader, writer = await asyncio.open_connection("127.0.0.1", bound_port(rt))
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
    # The runtime stopped while the connection was open: the drain ran out and the flow
    # was cut, which reaches the client as a reset, never as a clean end of stream.
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    with contextlib.suppress(ConnectionResetError):
        await writer.wait_closed()


@pytest.mark.parametrize(
    ("inbound", "path"),
    [
        ({"settings": {"port": 443}}, "inbounds[0].settings.address"),
        ({"settings": {"address": "192.0.2.7", "port": 0}}, "inbounds[0].settings.port"),
        ({"port": "1000-2000"}, "inbounds[0].port"),
    ],
)
def test_bad_config_names_the_json_path(inbound: dict[str, Any], path: str) -> None:
    pm = PluginManager()
    with pytest.raises(ConfigError) as info:
        pm.configure(build_config(config("blackhole", **inbound), pm.registry))
    assert info.value.path == path
'''

FILES = {"$pkg/inbound.py": SOURCE, "tests/test_${name_id}.py": TEST}
