"""The ``socks`` outbound (Xray ``proxy/socks`` client side): SOCKS5 CONNECT and UDP ASSOCIATE.

Settings, in either of Xray's two shapes::

    {"servers": [{"address": "10.0.0.1", "port": 1080, "users": [{"user": "u", "pass": "p"}]}]}
    {"address": "10.0.0.1", "port": 1080, "user": "u", "pass": "p"}

The first server and its first user are used.  TCP: connect to the server, run the
handshake (offering user/password auth when a user is configured) and ``CONNECT``
within the level's ``handshake`` timeout, accept the app's link only after the
server said "succeeded" (so a refused target resets the app), then relay.  UDP:
``UDP ASSOCIATE``, then every app datagram goes to the relay with a SOCKS header
naming its destination, and every reply comes back with the source the relay
names, so the app sees full-cone behaviour if the server provides it.  The
association ends with the control connection, the app's flow, or ``connIdle``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from typing import Any

from tunray.config.errors import ConfigError, join
from tunray.config.schema import Field, Int, ListOf, Schema, Settings, Str
from tunray.link import ByteLink, PacketLink
from tunray.net.address import Destination, Host, Network, parse_host
from tunray.net.stream import SocketStream, open_stream
from tunray.outbound import Outbound
from tunray.policy import LevelPolicy
from tunray.relay import relay
from tunray.session import FlowContext

from tunray_socks import codec
from tunray_socks.codec import SocksError

USER_SCHEMA = Schema(
    Field("user", Str(), default="", doc="user name (RFC 1929)"),
    Field("pass", Str(), default="", doc="password"),
    Field("level", Int(min=0), default=0, doc="policy level"),
    Field("email", Str(), default=""),
)

SERVER_SCHEMA = Schema(
    Field("address", Str(non_empty=True), doc="SOCKS server host"),
    Field("port", Int(min=1, max=65535), doc="SOCKS server port"),
    Field("users", ListOf(USER_SCHEMA), default=[], doc="credentials; the first is used"),
)


def _check(s: Settings, path: str) -> None:
    flat = s.address is not None or s.port is not None
    if s.servers is not None and flat:
        raise ConfigError(path, "give either servers or address/port, not both")
    if s.servers is None and not flat:
        raise ConfigError(join(path, "address"), "is required (or a servers list)")
    if flat and s.address is None:
        raise ConfigError(join(path, "address"), "is required with port")
    if flat and s.port is None:
        raise ConfigError(join(path, "port"), "is required with address")


class _Reader:
    """Feeds a SOCKS parser from a stream; what the server sent past the handshake stays in ``buf``."""

    __slots__ = ("buf", "stream")

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def next(self, parse: Any) -> Any:
        while True:
            result = parse(self.buf)
            if result is not None:
                value, used = result
                del self.buf[:used]
                return value
            chunk = await self.stream.read(65536)
            if not chunk:
                raise SocksError("the SOCKS server closed the connection during the handshake")
            self.buf += chunk


class SocksOutbound(Outbound):
    protocol = "socks"
    settings_schema = Schema(
        Field("servers", ListOf(SERVER_SCHEMA, min_items=1), default=None, doc="Xray's classic form"),
        Field("address", Str(non_empty=True), default=None, doc="server host (flat form)"),
        Field("port", Int(min=1, max=65535), default=None, doc="server port (flat form)"),
        Field("user", Str(), default="", doc="user name (flat form)"),
        Field("pass", Str(), default="", doc="password (flat form)"),
        Field("level", Int(min=0), default=0, doc="policy level (flat form)"),
        Field("email", Str(), default=""),
        check=_check,
    )

    def __init__(self, config: Any, runtime: Any) -> None:
        super().__init__(config, runtime)
        s = self.settings
        self.user: str
        self.password: str
        if s.servers is not None:
            server = s.servers[0]
            user = server.users[0] if server.users else None
            address, port = server.address, server.port
            self.user, self.password = (user.user, user.get("pass")) if user else ("", "")
            self.level: int = user.level if user else 0
        else:
            address, port = s.address, s.port
            self.user, self.password, self.level = s.user, s.get("pass"), s.level
        self.server = Destination(Network.TCP, parse_host(address), port)

    @property
    def _sockopt(self) -> Settings | None:
        stream = self.config.stream
        return stream.settings.sockopt if stream is not None else None

    async def _open(self, cmd: int, host: Host, port: int, policy: LevelPolicy) -> tuple[SocketStream, bytes, Any]:
        """Connect to the server and run the handshake: ``(stream, early bytes, (bound host, port, peer))``."""
        sock = await self.runtime.dialer.connect_tcp(
            self.server, opts=self._sockopt, send_through=self.config.send_through, timeout=policy.handshake
        )
        peer = sock.getpeername()
        stream = await open_stream(sock, high_water=policy.buffer_size)
        try:
            async with asyncio.timeout(policy.handshake):
                reader = _Reader(stream)
                await stream.write(codec.greeting(bool(self.user)))
                method = await reader.next(codec.parse_choice)
                if method == codec.USER_PASS and self.user:
                    await stream.write(codec.auth_request(self.user, self.password))
                    if not await reader.next(codec.parse_auth_reply):
                        raise SocksError(f"SOCKS server {self.server.netloc} rejected user {self.user!r}")
                elif method != codec.NO_AUTH:
                    raise SocksError(f"SOCKS server {self.server.netloc} accepts none of our auth methods")
                await stream.write(codec.request(cmd, host, port))
                rep, bound_host, bound_port = await reader.next(codec.parse_reply)
                if rep != 0:
                    raise SocksError(f"SOCKS server {self.server.netloc}: {codec.REPLIES.get(rep, f'error {rep}')}")
        except BaseException:
            stream.abort()
            raise
        return stream, bytes(reader.buf), (bound_host, bound_port, peer)

    async def process(self, ctx: FlowContext, link: ByteLink | PacketLink) -> None:
        policy = self.runtime.policy(self.level or ctx.user.level)
        if isinstance(link, PacketLink):
            await self._udp(link, policy)
            return
        stream, early, _ = await self._open(codec.CONNECT, ctx.target.host, ctx.target.port, policy)
        try:
            await link.accept()
            if early:
                await link.write(early)
            await relay(link, stream, policy, ctx)
        except BaseException:
            stream.abort()
            raise
        await stream.aclose()

    async def _udp(self, link: PacketLink, policy: LevelPolicy) -> None:
        any_v4 = ipaddress.IPv4Address(0)
        control, _, (bound_host, bound_port, peer) = await self._open(codec.UDP_ASSOCIATE, any_v4, 0, policy)
        try:
            relay_ip = bound_host
            if isinstance(relay_ip, str) or relay_ip.is_unspecified:
                relay_ip = ipaddress.ip_address(str(peer[0]).split("%")[0])  # "same address as the server"
            relay_addr = (str(relay_ip), bound_port)
            family = socket.AF_INET6 if relay_ip.version == 6 else socket.AF_INET
            sock = self.runtime.dialer.udp_socket(family, peer=relay_ip, opts=self._sockopt)
            activity = [time.monotonic()]
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _RelayReplies(link, relay_ip, bound_port, activity), sock=sock
            )
            up = loop.create_task(_uplink(link, transport, relay_addr, activity, policy))
            ctl = loop.create_task(_until_closed(control))
            try:
                done, _ = await asyncio.wait((up, ctl), return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if not task.cancelled() and (exc := task.exception()) is not None:
                        raise exc
            finally:
                for task in (up, ctl):
                    task.cancel()
                await asyncio.gather(up, ctl, return_exceptions=True)
                transport.close()
        finally:
            control.abort()


class _RelayReplies(asyncio.DatagramProtocol):
    """Datagrams from the relay: unwrap the SOCKS header, deliver with the real source."""

    def __init__(self, link: PacketLink, relay_ip: Any, relay_port: int, activity: list[float]) -> None:
        self.link = link
        self.relay = (relay_ip, relay_port)
        self.activity = activity

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if (ipaddress.ip_address(str(addr[0]).split("%")[0]), int(addr[1])) != self.relay:
            return  # only the relay may talk to this socket
        try:
            host, port, payload = codec.parse_udp(data)
        except SocksError:
            return
        self.activity[0] = time.monotonic()
        self.link.send(payload, Destination(Network.UDP, host, port))

    def error_received(self, exc: Exception) -> None:
        pass


async def _uplink(
    link: PacketLink,
    transport: asyncio.DatagramTransport,
    relay_addr: tuple[str, int],
    activity: list[float],
    policy: LevelPolicy,
) -> None:
    while True:
        left = activity[0] + policy.conn_idle - time.monotonic()
        if left <= 0:
            return
        try:
            packet = await asyncio.wait_for(link.recv(), left)
        except TimeoutError:
            continue  # a reply may have kept the association alive
        if packet is None:
            return
        activity[0] = time.monotonic()
        transport.sendto(codec.udp_packet(packet.peer.host, packet.peer.port, packet.data), relay_addr)


async def _until_closed(control: SocketStream) -> None:
    """RFC 1928: the association lives as long as its TCP connection."""
    while await control.read(4096):
        pass
