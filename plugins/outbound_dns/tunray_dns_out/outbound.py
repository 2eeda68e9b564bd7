"""The ``dns`` outbound (Xray ``proxy/dns``): answer DNS queries routed to it.

A flow routed here is DNS: UDP datagrams, or TCP with the RFC 1035 two-byte length
before each message.  Each query is parsed and handled per :mod:`tunray_dns_out.rules`:
A/AAAA are answered from tunray's resolver (``hosts``, servers, FakeDNS, cache; the
TTL is the resolver's), other queries are answered empty, refused, dropped or
forwarded to the upstream.  The upstream is the flow's own destination with
``address``/``port``/``network`` (or the ``rewrite*`` names) substituted, dialed
lazily on the first forwarded query through the process dialer with this outbound's
``streamSettings.sockopt``; a TCP app may be forwarded over UDP and vice versa.

Queries coming from tunray's own resolver (flows opened by :mod:`tunray.dns.routed`,
Xray's ``IsOwnLink``) are always forwarded, so a rule sending port 53 here cannot loop.

Bounds: at most :data:`MAX_PENDING` resolver lookups per flow at once (more are
dropped and counted in ``dropped``, as a full queue would); the resolver bounds
lookups across flows (``dns.maxConcurrentQueries``) and its cache (``dns.cacheSize``);
FakeDNS bounds its pool (``fakedns.poolSize``).  The flow ends after the level's
``connIdle`` with no query or answer, when the app closes, or on cancellation.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

from loguru import logger
from tunray.bytestream import StreamClosed, StreamReset
from tunray.config.errors import ConfigError
from tunray.config.schema import AnyValue, Enum, Field, Int, Schema, Settings, Str
from tunray.dns.message import AAAA, A, Message, Record, build_response, parse_message
from tunray.link import ByteLink, PacketLink
from tunray.net.address import Destination, Network, parse_host
from tunray.net.stream import SocketStream, open_stream
from tunray.outbound import Outbound
from tunray.policy import LevelPolicy
from tunray.session import FlowContext

from tunray_dns_out.rules import Action, Rule, build_rules, decide

#: Resolver lookups one flow may have outstanding; further queries are dropped.
MAX_PENDING = 64
_NETWORK = Enum("tcp", "udp")


def _check(s: Settings, path: str) -> None:
    build_rules(s, path)
    for key in ("address", "rewriteAddress"):
        value = getattr(s, key)
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"{path}.{key}", "expected an IP address or a domain")


class DNSOutbound(Outbound):
    protocol = "dns"
    settings_schema = Schema(
        Field(
            "network", _NETWORK, default=None, doc='upstream network for forwarded queries ("tcp" or "udp")'
        ),
        Field("address", Str(), default=None, doc="upstream server for forwarded queries"),
        Field("port", Int(min=0, max=65535), default=0, doc="upstream port for forwarded queries"),
        Field("rewriteNetwork", _NETWORK, default=None, doc="older name of network"),
        Field("rewriteAddress", Str(), default=None, doc="older name of address"),
        Field("rewritePort", Int(min=0, max=65535), default=0, doc="older name of port"),
        Field("userLevel", Int(min=0), default=0, doc="policy level (connIdle ends an idle flow)"),
        Field("rules", AnyValue(), default=None, doc="[{action, qType, domain, rCode}], first match wins"),
        Field("nonIPQuery", Enum("reject", "drop", "skip"), default=None, doc="legacy: non-A/AAAA handling"),
        Field("blockTypes", AnyValue(), default=None, doc="legacy: query types to drop or refuse"),
        check=_check,
    )

    def __init__(self, config: Any, runtime: Any) -> None:
        super().__init__(config, runtime)
        s = self.settings
        self.rules: list[Rule] = build_rules(s, "settings")
        network = s.network or s.rewriteNetwork
        self.network = Network(network) if network else None
        address = s.address or s.rewriteAddress
        self.address = parse_host(address) if address else None
        self.port: int = s.port or s.rewritePort
        stream = config.stream
        self.sockopt: Settings | None = stream.settings.sockopt if stream is not None else None
        #: Queries dropped because a flow had MAX_PENDING lookups outstanding.
        self.dropped = 0
        #: Messages dropped because they were not a parseable DNS query.
        self.malformed = 0

    def upstream_for(self, target: Destination) -> Destination:
        dest = target
        if self.network is not None:
            dest = Destination(self.network, dest.host, dest.port)
        if self.address is not None:
            dest = dest.with_host(self.address)
        if self.port:
            dest = dest.with_port(self.port)
        return dest

    async def process(self, ctx: FlowContext, link: ByteLink | PacketLink) -> None:
        policy = self.runtime.policy(self.settings.userLevel or ctx.user.level)
        own = ctx.inbound_protocol == "dns"  # a query of tunray's own resolver (tunray.dns.routed)
        session = _Session(self, ctx, link, self.upstream_for(ctx.target), policy, own)
        try:
            await session.run()
        finally:
            await session.aclose()


class _Session:
    """One flow: read queries from the app, answer or forward each."""

    def __init__(
        self,
        outbound: DNSOutbound,
        ctx: FlowContext,
        link: ByteLink | PacketLink,
        upstream: Destination,
        policy: LevelPolicy,
        own: bool,
    ) -> None:
        self.outbound = outbound
        self.ctx = ctx
        self.link = link
        self.dest = upstream
        self.policy = policy
        self.own = own
        self.loop = asyncio.get_running_loop()
        self.last = self.loop.time()
        self.peer = ctx.target
        self.tasks: set[asyncio.Task[None]] = set()
        self.reader: asyncio.Task[None] | None = None
        self.udp: socket.socket | None = None
        self.stream: SocketStream | None = None
        self.connecting: asyncio.Lock = asyncio.Lock()

    # -- app side -------------------------------------------------------------------------

    async def run(self) -> None:
        link = self.link
        if isinstance(link, PacketLink):
            while (packet := await self._idle(link.recv())) is not None:
                self.peer = packet.peer
                await self._query(packet.data, packet.peer)
            return
        await link.accept()
        buf = bytearray()
        while chunk := await self._idle(link.read(65536)):
            buf += chunk
            while len(buf) >= 2:
                size = int.from_bytes(buf[:2], "big")
                if len(buf) < 2 + size:
                    break
                message = bytes(buf[2 : 2 + size])
                del buf[: 2 + size]
                await self._query(message, self.peer)
        # The app half-closed: let outstanding answers go out, then end.
        pending = [*self.tasks, *([self.reader] if self.reader is not None else [])]
        if pending:
            await asyncio.wait(pending, timeout=self.policy.downlink_only)

    async def _idle(self, read: Any) -> Any:
        """Await *read*, ending the flow (None / b"") after connIdle without activity."""
        task = asyncio.ensure_future(read)
        try:
            while True:
                remaining = self.last + self.policy.conn_idle - self.loop.time()
                if remaining <= 0:
                    return None
                done, _ = await asyncio.wait([task], timeout=remaining)
                if done:
                    self.last = self.loop.time()
                    return task.result()
        finally:
            if not task.done():
                task.cancel()

    async def reply(self, data: bytes, peer: Destination) -> None:
        self.last = self.loop.time()
        link = self.link
        if isinstance(link, PacketLink):
            link.send(data, peer)
            return
        try:
            await link.write(struct.pack("!H", len(data)) + data)
        except (StreamReset, StreamClosed):
            pass  # the app is gone; its read side ends the flow

    async def _query(self, data: bytes, peer: Destination) -> None:
        if self.own:
            await self._forward(data)
            return
        try:
            query = parse_message(data)
        except ValueError:
            query = None
        if query is None or query.is_response or not query.questions:
            self.outbound.malformed += 1
            logger.debug("{}: dns: malformed query dropped", self.ctx)
            return
        q = query.questions[0]
        action, rcode = decide(self.outbound.rules, q.qtype, q.name)
        if action is Action.HIJACK and q.qtype not in (A, AAAA):
            logger.error("{}: dns: can only hijack A/AAAA records", self.ctx)
            action = Action.RETURN
        if action is Action.DROP:
            logger.info("{}: dns: blocked type {} query for {}", self.ctx, q.qtype, q.name)
        elif action is Action.RETURN:
            if q.name:
                logger.info("{}: dns: rejected type {} query for {}", self.ctx, q.qtype, q.name)
                await self.reply(build_response(query, rcode=rcode, authoritative=True), peer)
        elif action is Action.DIRECT:
            await self._forward(data)
        elif len(self.tasks) >= MAX_PENDING:
            self.outbound.dropped += 1
        else:
            task = self.loop.create_task(self._hijack(query, peer))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _hijack(self, query: Message, peer: Destination) -> None:
        q = query.questions[0]
        resolver = self.outbound.runtime.resolver
        answer = await resolver.resolve(q.name, q.qtype == A, q.qtype == AAAA, fake=True)
        if answer.rcode < 0:
            logger.info("{}: dns: no answer for {} (type {})", self.ctx, q.name, q.qtype)
            return  # Xray sends nothing when every server failed
        records = [
            Record(q.name, q.qtype, answer.ttl, ip)
            for ip in answer.ips
            if ip.version == (4 if q.qtype == A else 6)
        ]
        await self.reply(build_response(query, records, rcode=answer.rcode, authoritative=True), peer)

    # -- upstream side --------------------------------------------------------------------

    async def _forward(self, data: bytes) -> None:
        try:
            async with self.connecting:
                if self.udp is None and self.stream is None:
                    await self._connect()
            if self.udp is not None:
                await self.loop.sock_sendall(self.udp, data)
            elif self.stream is not None:
                await self.stream.write(struct.pack("!H", len(data)) + data)
        except OSError as exc:
            logger.info("{}: dns: forwarding to {} failed: {}", self.ctx, self.dest, exc)

    async def _connect(self) -> None:
        dialer = self.outbound.runtime.dialer
        opts = self.outbound.sockopt
        if self.dest.network is Network.TCP:
            sock = await dialer.connect_tcp(self.dest, opts=opts, timeout=self.policy.handshake)
            self.stream = await open_stream(sock)
            self.reader = self.loop.create_task(self._read_tcp(self.stream))
            return
        ip = (await dialer.resolve(self.dest, "AsIs"))[0]
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        sock = dialer.udp_socket(family, peer=ip, opts=opts)
        try:
            sock.connect((str(ip), self.dest.port))
        except OSError:
            sock.close()
            raise
        self.udp = sock
        self.reader = self.loop.create_task(self._read_udp(sock))

    async def _read_udp(self, sock: socket.socket) -> None:
        while True:
            try:
                data = await self.loop.sock_recv(sock, 65535)
            except OSError:
                return
            await self.reply(data, self.peer)

    async def _read_tcp(self, stream: SocketStream) -> None:
        try:
            await self._relay_tcp(stream)
        except OSError as exc:  # StreamReset included: the upstream went away
            logger.info("{}: dns: upstream {} ended: {}", self.ctx, self.dest, exc)

    async def _relay_tcp(self, stream: SocketStream) -> None:
        buf = bytearray()
        while chunk := await stream.read(65536):
            buf += chunk
            while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
                size = int.from_bytes(buf[:2], "big")
                message = bytes(buf[2 : 2 + size])
                del buf[: 2 + size]
                await self.reply(message, self.peer)

    async def aclose(self) -> None:
        tasks = [*self.tasks, *([self.reader] if self.reader is not None else [])]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.udp is not None:
            self.udp.close()
        if self.stream is not None:
            self.stream.abort()
