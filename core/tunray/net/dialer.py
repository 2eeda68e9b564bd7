"""Dialing outbound connections: name resolution strategy, socket options, binding.

Every outbound socket of the process goes through :class:`Dialer`, so process-wide
controls apply to all of them: a TUN inbound with ``autoOutboundsInterface`` adds a
*controller* that binds each socket to the uplink interface (loopback destinations
excepted), exactly where Xray registers its dialer controller.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import random
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from tunray.config.schema import Enum, Settings
from tunray.dns.resolver import families
from tunray.net import sockopt
from tunray.net.address import Destination, IPAddress
from tunray.net.hostfence import HostAccessDenied, HostFence
from tunray.net.ready import connect_now, wait_connected

if TYPE_CHECKING:
    from tunray.dns import Resolver

STRATEGIES = Enum(*sockopt.DOMAIN_STRATEGIES)

#: A controller sees each new socket and its destination IP before connect.
Controller = Callable[[socket.socket, IPAddress], None]


@functools.lru_cache(maxsize=4096)
def _ip_text(ip: IPAddress) -> str:
    # ipaddress formats from the integer on every str(): ~3 µs per connection saved.
    return str(ip)


class DialError(ConnectionError):
    """A dial failed; the message says where and why, for the access/error log."""


class Dialer:
    def __init__(self, resolver: Resolver | None = None) -> None:
        self.resolver = resolver
        self.controllers: list[Controller] = []

    async def resolve(self, dest: Destination, strategy: str) -> list[IPAddress]:
        """IPs for *dest* under *strategy* (``AsIs`` uses the OS resolver).

        ``Force*`` strategies raise :class:`DialError` when nothing resolves; ``Use*``
        fall back to the OS resolver, as Xray's freedom falls back to dialing the domain.
        """
        if dest.ip is not None:
            return [dest.ip]
        assert dest.domain is not None
        s = strategy or "AsIs"
        if s != "AsIs" and self.resolver is not None:
            ips = await self.resolver.lookup(dest.domain, s)
            if ips:
                return ips
            if s.startswith("Force"):
                raise DialError(f"cannot resolve {dest.domain} ({s})")
        elif s.startswith("Force"):
            raise DialError(f"cannot resolve {dest.domain} ({s}): no dns section")
        want4, want6, _ = families(s)
        family = socket.AF_UNSPEC if want4 == want6 else socket.AF_INET if want4 else socket.AF_INET6
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(dest.domain, dest.port, family=family, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise DialError(f"cannot resolve {dest.domain}: {exc.strerror}") from None
        seen: list[IPAddress] = []
        for info in infos:
            ip = ipaddress.ip_address(info[4][0])
            if ip not in seen:
                seen.append(ip)
        return seen

    def _socket(
        self, ip: IPAddress, kind: int, opts: Settings | None, send_through: str
    ) -> socket.socket:
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        sock = socket.socket(family, kind | socket.SOCK_NONBLOCK)  # (no FIONBIO ioctl)
        try:
            tcp = kind == socket.SOCK_STREAM
            if tcp:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if not (opts is not None and opts.interface):
                for control in self.controllers:
                    control(sock, ip)
            sockopt.apply(sock, opts, tcp=tcp)
            if send_through:
                sock.bind((send_through, 0))
        except OSError as exc:
            sock.close()
            raise DialError(f"cannot prepare socket to {ip}: {exc.strerror or exc}") from None
        except BaseException:
            sock.close()
            raise
        return sock

    async def connect_tcp(
        self,
        dest: Destination,
        *,
        opts: Settings | None = None,
        strategy: str = "AsIs",
        send_through: str = "",
        timeout: float = 4.0,
        fence: HostFence | None = None,
    ) -> socket.socket:
        """A connected non-blocking TCP socket to *dest*; tries each resolved address in turn.

        With a *fence* (the flow's ``host_fence``), resolved addresses of the host itself
        are skipped; if nothing else is left the dial fails with :class:`HostAccessDenied`.
        """
        # One deadline for resolving and every connect attempt, armed only when something
        # waits: a numeric destination that connects inside connect(2) (loopback, a local
        # namespace) costs no timer.
        deadline: float | None = None
        if dest.ip is not None:
            ips = [dest.ip]
        else:
            deadline = asyncio.get_running_loop().time() + timeout
            async with asyncio.timeout_at(deadline):
                ips = await self.resolve(dest, strategy)
        if fence is not None:
            ips = self._fenced(ips, dest.port, fence)
        if len(ips) > 1 and dest.is_domain and strategy != "AsIs":
            random.shuffle(ips)
        last: OSError | None = None
        for ip in ips:
            sock = self._socket(ip, socket.SOCK_STREAM, opts, send_through)
            waited: asyncio.Timeout | None = None
            try:
                if not connect_now(sock, (_ip_text(ip), dest.port)):
                    if deadline is None:
                        deadline = asyncio.get_running_loop().time() + timeout
                    async with (waited := asyncio.timeout_at(deadline)):
                        await wait_connected(sock)
                return sock
            except OSError as exc:
                sock.close()
                if waited is not None and waited.expired():
                    raise  # the dial's time is up (TimeoutError): no other address is tried
                last = exc
            except BaseException:
                sock.close()
                raise
        if last is None:
            raise DialError(f"no address for {dest.netloc}")
        raise DialError(f"dial {dest.netloc} failed: {last.strerror or last}")

    @staticmethod
    def _fenced(ips: list[IPAddress], port: int, fence: HostFence) -> list[IPAddress]:
        allowed: list[IPAddress] = []
        denied: HostAccessDenied | None = None
        for ip in ips:
            try:
                fence.check(ip, port)
            except HostAccessDenied as exc:
                denied = exc
                continue
            allowed.append(ip)
        if not allowed and denied is not None:
            raise denied
        return allowed

    def udp_socket(
        self, family: int, *, peer: IPAddress | None = None, opts: Settings | None = None, send_through: str = ""
    ) -> socket.socket:
        """An unconnected UDP socket for full-cone use (``sendto`` per packet).

        Controllers are asked once, with the flow's first destination *peer*.
        """
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            if peer is not None and not (opts is not None and opts.interface):
                for control in self.controllers:
                    control(sock, peer)
            sockopt.apply(sock, opts, tcp=False)
            sock.bind((send_through or ("::" if family == socket.AF_INET6 else "0.0.0.0"), 0))
        except OSError as exc:
            sock.close()
            raise DialError(f"cannot open UDP socket: {exc.strerror or exc}") from None
        return sock
