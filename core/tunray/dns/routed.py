"""Where DNS queries leave: straight from this host, or as flows through tunray's dispatcher.

Xray sends every query of a server not marked ``+local`` (and not ``localhost``)
through its own routing, with the inbound tag of the server (``tag`` per server,
else the ``dns`` section's ``tag``), so rules such as ``{"inboundTag": ["dns"],
"outboundTag": "proxy"}`` take DoH through a VLESS outbound.

:class:`RoutedConnector` does that without any plugin: it makes a socket pair,
hands one end to the resolver's wire code and wraps the other as the app side of a
flow (a :class:`~tunray.link.ByteLink` for TCP, a :class:`~tunray.link.PacketLink`
over a ``SOCK_SEQPACKET`` pair for UDP, which keeps datagram boundaries and reports
the near end closing), then starts it with ``dispatcher.spawn``.
Closing the resolver's end ends the flow.  :class:`LocalConnector` dials directly
through the process dialer, so ``autoOutboundsInterface`` binds these sockets too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import weakref
from typing import TYPE_CHECKING

from tunray.link import ByteLink, LinkClosed, Packet, PacketLink
from tunray.net.address import Destination, Network
from tunray.net.applink import SocketByteLink
from tunray.net.dialer import Dialer
from tunray.net.stream import SocketStream, open_stream
from tunray.session import FlowContext

if TYPE_CHECKING:
    from tunray.runtime import Runtime

_NOWHERE = ipaddress.IPv4Address("0.0.0.0")


class LocalConnector:
    def __init__(self, dialer: Dialer | None = None) -> None:
        self.dialer = dialer or Dialer()

    async def tcp(self, dest: Destination, timeout: float) -> socket.socket:
        return await self.dialer.connect_tcp(dest, timeout=timeout)

    async def udp(self, dest: Destination) -> socket.socket:
        ip = (await self.dialer.resolve(dest, "AsIs"))[0]
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        sock = self.dialer.udp_socket(family, peer=ip)
        try:
            sock.connect((str(ip), dest.port))
        except OSError:
            sock.close()
            raise
        return sock


class _StreamLink(SocketByteLink):
    """The dispatcher's side of a routed TCP query connection.

    Aborted by the resolver (shutdown), its reads raise instead of returning a clean
    end, so the outbound resets its upstream at once instead of waiting for it to close.
    """

    __slots__ = ("__weakref__", "_aborted")

    def __init__(self, stream: SocketStream) -> None:
        super().__init__(stream)
        self._aborted = False

    async def read(self, max_bytes: int = 65536) -> bytes:
        data = await super().read(max_bytes)
        if self._aborted:
            raise LinkClosed("the resolver closed this DNS connection")
        return data

    def abort(self) -> None:
        self._aborted = True
        super().abort()


class _SeqPacketLink(PacketLink):
    __slots__ = ("__weakref__", "_closed", "_dest", "_sock")

    def __init__(self, sock: socket.socket, dest: Destination) -> None:
        self._sock = sock
        self._dest = dest
        self._closed = False

    async def recv(self) -> Packet | None:
        if self._closed:
            return None
        try:
            data = await asyncio.get_running_loop().sock_recv(self._sock, 65535)
        except OSError:
            data = b""
        if not data:
            self.abort()
            return None
        return Packet(data, self._dest)

    def send(self, data: bytes, source: Destination) -> None:
        if self._closed:
            return
        try:
            self._sock.send(data)
        except (BlockingIOError, OSError):
            pass  # a full or closed pair drops, as a network would

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            self._sock.close()

    async def aclose(self) -> None:
        self.abort()


class RoutedConnector:
    """Opens each connection as a flow with inbound tag *tag* through *runtime*'s dispatcher.

    The dispatcher owns the flow tasks (``Dispatcher.spawn``) and drains them at shutdown.
    """

    def __init__(self, runtime: Runtime, tag: str) -> None:
        self.runtime = runtime
        self.tag = tag
        self.links: weakref.WeakSet[ByteLink | PacketLink] = weakref.WeakSet()

    def _dispatch(self, dest: Destination, link: ByteLink | PacketLink) -> None:
        ctx = FlowContext(self.tag, "dns", Destination(dest.network, _NOWHERE, 0), dest)
        self.links.add(link)
        self.runtime.dispatcher.spawn(ctx, dest, link)

    def abort_all(self) -> None:
        """End every flow this connector opened (shutdown), as errors so they stop at once."""
        for link in list(self.links):
            link.abort()

    async def tcp(self, dest: Destination, timeout: float) -> socket.socket:
        near, far = socket.socketpair()
        near.setblocking(False)
        far.setblocking(False)
        try:
            stream = await open_stream(far)
        except BaseException:
            near.close()
            far.close()
            raise
        self._dispatch(Destination(Network.TCP, dest.host, dest.port), _StreamLink(stream))
        return near

    async def udp(self, dest: Destination) -> socket.socket:
        near, far = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        near.setblocking(False)
        far.setblocking(False)
        self._dispatch(Destination(Network.UDP, dest.host, dest.port), _SeqPacketLink(far, dest))
        return near
