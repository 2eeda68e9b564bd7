"""The ``socks`` inbound (also ``mixed``): SOCKS 4/4a/5 and, on the same port, HTTP.

As in Xray, a connection whose first byte is not 4 or 5 is handed to the HTTP proxy
(with the same accounts, when ``auth`` is ``password``).

CONNECT: the handshake runs with the level's ``handshake`` timeout; the flow's link
answers "succeeded" only once the outbound is up, and "host unreachable" (SOCKS4:
"rejected") when routing or the dial fails.

UDP ASSOCIATE (``udp: true``): a UDP socket per association on ``ip`` (default: the
address the client reached us on), port chosen by the kernel, as Xray's current server
does.  Datagrams are accepted from the client's address only (its port is learned from
the first datagram unless the request named it).  The association is one full-cone
flow: each datagram carries its own destination, each reply its real source.  It ends
when the TCP connection closes or the flow ends (idle), and then closes both.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from typing import TYPE_CHECKING, Any, ClassVar

from loguru import logger
from tunray.config.errors import ConfigError
from tunray.config.schema import IP, Bool, Enum, Field, Int, Schema, Settings
from tunray.net.address import Destination, Host, Network
from tunray.net.applink import QueuePacketLink, SocketByteLink
from tunray.net.listen import sockaddr_destination
from tunray.net.stream import SocketStream

from tunray_local import socks_proto as sp
from tunray_local.base import ACCOUNTS, LocalInbound, Refused, accounts_of
from tunray_local.http import HttpProxy

if TYPE_CHECKING:
    from tunray.config.model import InboundConfig
    from tunray.runtime import Runtime


def _check_auth(s: Settings, path: str) -> None:
    # Xray ignores accounts unless auth is "password": an operator who lists accounts
    # believes the proxy is protected, so say it is not instead of ignoring them.
    if s.accounts and s.auth != "password":
        raise ConfigError(f"{path}.accounts", 'has no effect unless "auth" is "password"')
    if s.auth == "password" and not s.accounts:
        raise ConfigError(f"{path}.accounts", 'are required with "auth": "password"')


class SocksInbound(LocalInbound):
    protocol = "socks"
    settings_schema: ClassVar[Schema] = Schema(
        Field("auth", Enum("noauth", "password"), default="noauth", doc='"password" requires accounts'),
        ACCOUNTS,
        Field("udp", Bool(), default=False, doc="allow UDP ASSOCIATE"),
        Field("ip", IP, default=None, doc="address for UDP ASSOCIATE (default: the one the client reached)"),
        Field("userLevel", Int(min=0), default=0, doc="policy level of every flow"),
        check=_check_auth,
    )

    def __init__(self, config: InboundConfig, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        s = self.settings
        # Xray: any auth other than "password" means no authentication.
        self.accounts = accounts_of(s) if s.auth == "password" else {}
        self.udp = bool(s.udp)
        self.udp_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = s.ip
        self.http = HttpProxy(self, self.accounts, allow_transparent=False)

    async def handle(
        self, stream: SocketStream, sock: socket.socket, peer: Destination | None, local: Destination | None
    ) -> None:
        # One timer for the whole handshake (the level's ``handshake``), not one per read.
        try:
            async with asyncio.timeout(self.policy.handshake):
                first = await stream.read()
                if not first:
                    return
                if first[0] in (sp.V4, sp.V5):
                    hs = sp.SocksHandshake(self.accounts, udp=self.udp)
                    request = await self._handshake(hs, stream, first)
        except TimeoutError:
            raise sp.ProtocolError("handshake timed out") from None
        if first[0] not in (sp.V4, sp.V5):
            await self.http.serve(stream, peer, first)
            return
        await self._request(request, hs.leftover, stream, sock, peer, local)

    @staticmethod
    async def _handshake(hs: sp.SocksHandshake, stream: SocketStream, data: bytes) -> sp.Request:
        while True:
            for ev in hs.receive(data):
                if isinstance(ev, sp.Send):
                    await stream.write(ev.data)
                elif isinstance(ev, sp.Refuse):
                    raise Refused(ev.reason)
                else:
                    return ev
            data = await stream.read()
            if not data:
                raise sp.ProtocolError("handshake incomplete (connection closed)")

    async def _request(
        self,
        req: sp.Request,
        leftover: bytes,
        stream: SocketStream,
        sock: socket.socket,
        peer: Destination | None,
        local: Destination | None,
    ) -> None:
        if req.udp:
            await self._associate(req, stream, sock, peer, local)
            return
        if req.version == sp.V4:
            ok, refused = sp.SUCCESS4, sp.REFUSED4
        else:
            bound = local or Destination(Network.TCP, sp.ZERO, 0)
            ok, refused = _success5(bound.host, bound.port), sp.REFUSED5
        link = SocketByteLink(stream, leftover, accept_reply=ok, refuse_reply=refused)
        ctx = self.context(peer, req.destination, req.user)
        await self.runtime.dispatcher.dispatch_link(ctx, req.destination, link)

    async def _associate(
        self,
        req: sp.Request,
        stream: SocketStream,
        sock: socket.socket,
        peer: Destination | None,
        local: Destination | None,
    ) -> None:
        if peer is None or local is None:
            await stream.write(sp.reply5(sp.REP_CMD_UNSUPPORTED, sp.ZERO, 0))
            raise Refused("UDP ASSOCIATE over a Unix socket")
        bind_ip = self.udp_ip if self.udp_ip is not None else local.host
        family = socket.AF_INET6 if isinstance(bind_ip, ipaddress.IPv6Address) else socket.AF_INET
        expect_host = peer.host
        expect_port = 0
        if isinstance(req.destination.host, ipaddress.IPv4Address | ipaddress.IPv6Address) and not (
            req.destination.host.is_unspecified
        ):
            expect_host, expect_port = req.destination.host, req.destination.port
        loop = asyncio.get_running_loop()
        assoc = _Association(self, str(expect_host), expect_port)
        usock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            usock.setblocking(False)
            usock.bind((str(bind_ip), 0))
            transport, _ = await loop.create_datagram_endpoint(lambda: assoc, sock=usock)
        except BaseException:
            usock.close()
            raise
        try:
            port = usock.getsockname()[1]
            await stream.write(sp.reply5(sp.REP_OK, bind_ip, port))
            watcher = loop.create_task(_drain_until_closed(stream))
            first = assoc.first
            try:
                await asyncio.wait((watcher, first), return_when=asyncio.FIRST_COMPLETED)
                if not first.done():
                    return  # the client closed the association before sending anything
                ctx = self.context(peer, first.result(), req.user)
                ctx.source = Destination(Network.UDP, peer.host, assoc.client_port or peer.port)
                flow = loop.create_task(self.runtime.dispatcher.dispatch_link(ctx, first.result(), assoc.link))
                await asyncio.wait((watcher, flow), return_when=asyncio.FIRST_COMPLETED)
                assoc.link.abort()
                await flow
            finally:
                for t in (watcher, first):
                    t.cancel()
                await asyncio.gather(watcher, first, return_exceptions=True)
        finally:
            assoc.link.abort()
            transport.close()


@functools.lru_cache(maxsize=256)
def _success5(host: Host, port: int) -> bytes:
    # The bound address is one of the few the inbound listens on: encode each once.
    return sp.reply5(sp.REP_OK, host, port)


async def _drain_until_closed(stream: SocketStream) -> None:
    """RFC 1928: the association lives as long as its TCP connection; anything sent there is ignored."""
    while await stream.read():
        pass


class _Association(asyncio.DatagramProtocol):
    """The UDP side of one association: decode, filter by client address, queue."""

    def __init__(self, inbound: SocksInbound, client_host: str, client_port: int) -> None:
        self.inbound = inbound
        self.client_host = ipaddress.ip_address(client_host)
        self.client_port = client_port
        self.transport: asyncio.DatagramTransport | None = None
        self.first: asyncio.Future[Destination] = asyncio.get_running_loop().create_future()
        self.link = QueuePacketLink(self._reply)
        self.malformed = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        src = sockaddr_destination(addr, Network.UDP)
        if src.host != self.client_host:
            return
        if self.client_port and src.port != self.client_port:
            return
        self.client_port = src.port
        try:
            dest, payload = sp.decode_udp(data)
        except sp.ProtocolError as exc:
            self.malformed += 1
            logger.debug("socks {!r}: UDP datagram dropped: {}", self.inbound.tag, exc)
            return
        if not payload:
            return
        if not self.first.done():
            self.first.set_result(dest)
        self.link.put(payload, dest)

    def _reply(self, data: bytes, source: Destination) -> None:
        if self.transport is None or not self.client_port:
            return
        self.transport.sendto(sp.encode_udp(source, data), (str(self.client_host), self.client_port))


class MixedInbound(SocksInbound):
    """Xray's ``mixed``: the name it gives the socks inbound that also speaks HTTP (all do)."""

    protocol = "mixed"
