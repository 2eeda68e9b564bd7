"""The ``dokodemo-door`` inbound (Xray's newer name: ``tunnel``): forward to a fixed or original destination.

Destination of a flow, as Xray chooses it:

* ``followRedirect`` with ``streamSettings.sockopt.tproxy``: ``"redirect"`` reads the
  original destination of an nftables/iptables REDIRECT'ed TCP connection
  (``SO_ORIGINAL_DST``); ``"tproxy"`` listens with ``IP_TRANSPARENT`` and takes the
  accepted socket's local address (TCP) or the datagram's ``IP_ORIGDSTADDR`` (UDP).
* otherwise ``address``/``port`` (``address`` absent: localhost in the family the
  client used; ``port`` absent or 0: the port the client reached), after ``portMap``
  (``{"local port": "host:port"}``, either side optional).

UDP: one full-cone flow per client source address.  Replies leave from the listening
socket, or, under TPROXY, from a transparent socket bound to each reply's real source
so the client sees the address it sent to.  These reply sockets close with the flow.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from typing import TYPE_CHECKING, Any, ClassVar

from loguru import logger
from tunray.config.errors import ConfigError
from tunray.config.schema import Bool, Enum, Field, Int, ListOf, MapOf, Schema, Settings, Str
from tunray.net.address import Destination, Network, parse_host
from tunray.net.applink import QueuePacketLink, SocketByteLink
from tunray.net.listen import IP_TRANSPARENT, IPV6_TRANSPARENT, sockaddr_destination
from tunray.net.stream import SocketStream

from tunray_local.base import LocalInbound, Refused

if TYPE_CHECKING:
    from tunray.config.model import InboundConfig
    from tunray.runtime import Runtime

SO_ORIGINAL_DST = 80
IP_ORIGDSTADDR = 20
IPV6_ORIGDSTADDR = 74
LOCALHOST_V4 = ipaddress.IPv4Address("127.0.0.1")
LOCALHOST_V6 = ipaddress.IPv6Address("::1")
MAX_DATAGRAM = 65535


def _networks(s: Settings, path: str) -> None:
    if not s.network:
        raise ConfigError(f"{path}.network", 'no network: expected "tcp", "udp" or "tcp,udp"')
    for i, (local, target) in enumerate((s.portMap or {}).items()):
        _host, sep, port = target.rpartition(":")
        if not sep or (port and not port.isdigit()) or not local.isdigit():
            raise ConfigError(f"{path}.portMap[{i}]", f"bad entry {local!r}: {target!r} (expected port: host:port)")


def _unmapped(dest: Destination) -> Destination:
    host = dest.host
    if isinstance(host, ipaddress.IPv6Address) and host.ipv4_mapped is not None:
        return dest.with_host(host.ipv4_mapped)
    return dest


def original_dst(sock: socket.socket) -> Destination:
    """SO_ORIGINAL_DST of a REDIRECT'ed TCP connection (IPv4 ``sockaddr_in`` or IPv6 ``sockaddr_in6``)."""
    if sock.family == socket.AF_INET6:
        try:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
            port = struct.unpack_from("!H", raw, 2)[0]
            return _unmapped(Destination(Network.TCP, ipaddress.IPv6Address(raw[8:24]), port))
        except OSError:
            pass  # an IPv4 connection on a dual-stack socket: ask the IPv4 table
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack_from("!H", raw, 2)[0]
    return Destination(Network.TCP, ipaddress.IPv4Address(raw[4:8]), port)


def _cmsg_destination(ancdata: list[tuple[int, int, bytes]]) -> Destination | None:
    for level, kind, data in ancdata:
        if level == socket.SOL_IP and kind == IP_ORIGDSTADDR and len(data) >= 8:
            return Destination(Network.UDP, ipaddress.IPv4Address(data[4:8]), struct.unpack_from("!H", data, 2)[0])
        if level == socket.IPPROTO_IPV6 and kind == IPV6_ORIGDSTADDR and len(data) >= 24:
            dest = Destination(Network.UDP, ipaddress.IPv6Address(data[8:24]), struct.unpack_from("!H", data, 2)[0])
            return _unmapped(dest)
    return None


class DokodemoInbound(LocalInbound):
    protocol = "dokodemo-door"
    sockopt_keys = ("tproxy", "mark")
    settings_schema: ClassVar[Schema] = Schema(
        Field("address", Str(), default="", aliases=("rewriteAddress",), doc="destination host (default localhost)"),
        Field("port", Int(min=0, max=65535), default=0, aliases=("rewritePort",), doc="destination port (0: the local port)"),
        Field(
            "network",
            ListOf(Enum("tcp", "udp"), comma_string=True, allow_single=True),
            default=["tcp"],
            aliases=("allowedNetwork",),
            doc='"tcp", "udp" or "tcp,udp"',
        ),
        Field("followRedirect", Bool(), default=False, doc="use the original destination (needs sockopt.tproxy)"),
        Field("portMap", MapOf(Str()), default=None, doc='{"local port": "host:port"}'),
        Field("userLevel", Int(min=0), default=0, doc="policy level of every flow"),
        check=_networks,
    )

    def __init__(self, config: InboundConfig, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        s = self.settings
        networks = [n.strip().lower() for n in s.network if n.strip()]
        self.tcp = "tcp" in networks
        self.udp = "udp" in networks
        self.follow = bool(s.followRedirect)
        stream = config.stream
        sockopt = stream.settings.sockopt if stream is not None else None
        self.tproxy = sockopt.tproxy if sockopt is not None else "off"
        self.mark = sockopt.mark if sockopt is not None else 0
        self.fixed_host = parse_host(s.address) if s.address else None
        self.fixed_port = s.port
        self.port_map: dict[str, str] = dict(s.portMap or {})
        self._udp_flows: dict[tuple[Any, ...], _UdpFlow] = {}
        self._udp_tasks: set[asyncio.Task[None]] = set()
        self._udp_readers: list[_UdpReader] = []

    # --- destinations -------------------------------------------------------------------------

    def _fixed(self, network: Network, local: Destination) -> Destination:
        host = self.fixed_host
        if host is None:
            host = LOCALHOST_V6 if isinstance(local.host, ipaddress.IPv6Address) else LOCALHOST_V4
        port = self.fixed_port or local.port
        mapped = self.port_map.get(str(local.port))
        if mapped:
            h, _, p = mapped.rpartition(":")
            if h:
                host = parse_host(h)
            if p:
                port = int(p)
        return Destination(network, host, port)

    # --- TCP ----------------------------------------------------------------------------------

    async def handle(
        self, stream: SocketStream, sock: socket.socket, peer: Destination | None, local: Destination | None
    ) -> None:
        local = local or Destination(Network.TCP, LOCALHOST_V4, 0)
        dest: Destination | None = None
        if self.follow and self.tproxy == "redirect":
            try:
                dest = original_dst(sock)
            except OSError as exc:  # not redirected (no conntrack entry): Xray falls back too
                logger.debug("dokodemo-door {!r}: no original destination: {}", self.tag, exc)
        elif self.follow and self.tproxy == "tproxy":
            dest = local
        if dest is not None and dest == local and sock.getsockname()[1] in self.address.ports:
            # Xray: a connection to this inbound itself (not redirected) would loop
            raise Refused(f"loopback connection detected: {dest} is this inbound")
        if dest is None and self.follow:
            # Xray: following redirects, no original destination leaves only address and port
            if self.fixed_host is None or not self.fixed_port:
                raise Refused("unable to get destination (not redirected, and no address/port set)")
            dest = Destination(Network.TCP, self.fixed_host, self.fixed_port)
        if dest is None:
            dest = self._fixed(Network.TCP, local)
        ctx = self.context(peer, dest)
        await self.runtime.dispatcher.dispatch_link(ctx, dest, SocketByteLink(stream))

    # --- UDP ----------------------------------------------------------------------------------

    async def open_udp(self) -> None:
        if not self.udp:
            return
        if self.address.unix:
            raise ConfigError(f"{self.config.path}.listen", "dokodemo-door UDP cannot listen on a Unix socket")
        loop = asyncio.get_running_loop()
        for sock in self.sockets(socket.SOCK_DGRAM, transparent=self.tproxy == "tproxy"):
            reader = _UdpReader(self, sock)
            loop.add_reader(sock.fileno(), reader.readable)
            self._udp_readers.append(reader)

    def datagram(self, reader: _UdpReader, data: bytes, client: Destination, local: Destination) -> None:
        key = (client.host, client.port, local.host, local.port) if self.follow else (client.host, client.port)
        flow = self._udp_flows.get(key)
        if flow is not None and not flow.link.closed:
            dest = self._udp_destination(local)
            if dest is not None:
                flow.link.put(data, dest)
            return
        if not self.accepting:
            return  # shutting down: no new flows
        dest = self._udp_destination(local)
        if dest is None:
            return  # following redirects without an original destination or address/port: dropped
        flow = _UdpFlow(self, reader, client, local)
        self._udp_flows[key] = flow
        flow.link.put(data, dest)
        task = asyncio.get_running_loop().create_task(self._run_udp(key, flow, dest))
        self._udp_tasks.add(task)
        task.add_done_callback(self._udp_tasks.discard)

    def _udp_destination(self, local: Destination) -> Destination | None:
        if self.follow and self.tproxy == "tproxy":
            return local
        if self.follow:
            if self.fixed_host is None or not self.fixed_port:
                return None
            return Destination(Network.UDP, self.fixed_host, self.fixed_port)
        return self._fixed(Network.UDP, local)

    async def _run_udp(self, key: tuple[Any, ...], flow: _UdpFlow, dest: Destination) -> None:
        ctx = self.context(flow.client, dest)
        try:
            await self.runtime.dispatcher.dispatch_link(ctx, dest, flow.link)
        finally:
            flow.close()
            if self._udp_flows.get(key) is flow:
                del self._udp_flows[key]

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        for reader in self._udp_readers:
            loop.remove_reader(reader.sock.fileno())
            reader.sock.close()
        self._udp_readers.clear()
        tasks = list(self._udp_tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for flow in list(self._udp_flows.values()):
            flow.close()
        self._udp_flows.clear()
        await super().stop()


class _UdpReader:
    """Reads one listening UDP socket (with the original destination under TPROXY)."""

    def __init__(self, inbound: DokodemoInbound, sock: socket.socket) -> None:
        self.inbound = inbound
        self.sock = sock
        self.local = sockaddr_destination(sock.getsockname(), Network.UDP)
        self.malformed = 0

    def readable(self) -> None:
        for _ in range(64):
            try:
                data, ancdata, _flags, addr = self.sock.recvmsg(MAX_DATAGRAM, 256)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                logger.debug("dokodemo-door {!r}: UDP read: {}", self.inbound.tag, exc)
                return
            client = sockaddr_destination(addr, Network.UDP)
            local = _cmsg_destination(ancdata) or self.local
            self.inbound.datagram(self, data, client, local)


class _UdpFlow:
    """One client source's flow; replies go back from the right source address."""

    def __init__(self, inbound: DokodemoInbound, reader: _UdpReader, client: Destination, local: Destination) -> None:
        self.inbound = inbound
        self.reader = reader
        self.client = client
        self.local = local
        self.reply_socks: dict[Destination, socket.socket] = {}
        self.link = QueuePacketLink(self._reply)

    def _client_addr(self, family: int) -> tuple[str, int]:
        host = self.client.host
        if family == socket.AF_INET6 and isinstance(host, ipaddress.IPv4Address):
            return (f"::ffff:{host}", self.client.port)
        return (str(host), self.client.port)

    def _reply(self, data: bytes, source: Destination) -> None:
        inbound = self.inbound
        if not (inbound.follow and inbound.tproxy == "tproxy") or not source.is_ip:
            sock = self.reader.sock
            sock.sendto(data, self._client_addr(sock.family))
            return
        reply_sock = self.reply_socks.get(source)
        if reply_sock is None:
            reply_sock = self.reply_socks[source] = self._transparent_socket(source)
        reply_sock.sendto(data, self._client_addr(reply_sock.family))

    def _transparent_socket(self, source: Destination) -> socket.socket:
        """A UDP socket bound to a foreign *source* (IP_TRANSPARENT), to answer as that host."""
        v6 = isinstance(source.host, ipaddress.IPv6Address)
        if not v6 and isinstance(self.client.host, ipaddress.IPv6Address):
            host: Any = f"::ffff:{source.host}"
            v6 = True
        else:
            host = str(source.host)
        sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if v6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
            else:
                sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            if self.inbound.mark:
                sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_MARK", 36), self.inbound.mark)
            sock.setblocking(False)
            sock.bind((host, source.port))
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        self.link.abort()
        for s in self.reply_socks.values():
            s.close()
        self.reply_socks.clear()


class TunnelInbound(DokodemoInbound):
    """Xray's newer name for dokodemo-door."""

    protocol = "tunnel"
