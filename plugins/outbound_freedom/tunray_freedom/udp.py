"""Full-cone UDP for freedom: one socket per app flow, ``sendto`` per packet.

The socket is dual-stack (IPv6 with ``IPV6_V6ONLY`` off) when the host has IPv6,
so one flow reaches IPv4 and IPv6 peers alike; IPv4 peers appear as
``::ffff:a.b.c.d`` on the wire of the socket API and are turned back into IPv4
for the app.  Every reply, from whichever address, reaches the app with that real
source address: endpoint-independent mapping and filtering.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable

from loguru import logger
from tunray.config.schema import Settings
from tunray.link import PacketLink
from tunray.net.address import Destination, IPAddress, Network
from tunray.net.dialer import Dialer, DialError
from tunray.net.hostfence import HostAccessDenied, HostFence
from tunray.policy import LevelPolicy
from tunray.relay import Activity, run_pumps


class _Downlink(asyncio.DatagramProtocol):
    __slots__ = ("activity", "error", "link")

    def __init__(self, link: PacketLink, activity: Activity) -> None:
        self.link = link
        self.activity = activity
        self.error: Exception | None = None

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        ip = ipaddress.ip_address(str(addr[0]).split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        self.activity.touch()
        self.link.send(data, Destination(Network.UDP, ip, int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable) are not fatal for a cone flow.
        self.error = exc


def _sockaddr(ip: IPAddress, port: int, dual: bool) -> tuple[str, int]:
    if dual and ip.version == 4:
        return (f"::ffff:{ip}", port)
    return (str(ip), port)


async def relay_udp(
    link: PacketLink,
    first_peer: Destination,
    dialer: Dialer,
    policy: LevelPolicy,
    *,
    strategy: str,
    rewrite: Callable[[Destination], Destination],
    opts: Settings | None,
    send_through: str,
    fence: HostFence | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    dual = socket.has_ipv6 and not (send_through and ipaddress.ip_address(send_through).version == 4)
    family = socket.AF_INET6 if dual else socket.AF_INET
    first_ip = first_peer.ip
    sock = dialer.udp_socket(family, peer=first_ip, opts=opts, send_through=send_through)
    activity = Activity()
    transport, _proto = await loop.create_datagram_endpoint(lambda: _Downlink(link, activity), sock=sock)
    resolved: dict[str, IPAddress] = {}
    cleared: set[tuple[IPAddress, int]] = set()  # destinations the fence already let through

    async def uplink() -> None:
        while True:
            packet = await link.recv()
            if packet is None:
                return
            activity.touch()
            dest = rewrite(packet.peer)
            ip = dest.ip
            if ip is None:
                assert dest.domain is not None
                ip = resolved.get(dest.domain)
                if ip is None:
                    try:
                        ips = await dialer.resolve(dest, strategy)
                    except DialError:
                        continue
                    ips4 = [i for i in ips if i.version == 4] if not dual else ips
                    if not ips4:
                        continue
                    ip = resolved[dest.domain] = ips4[0]
            if not dual and ip.version == 6:
                continue
            if fence is not None and (ip, dest.port) not in cleared:
                try:
                    fence.check(ip, dest.port)
                except HostAccessDenied as exc:
                    logger.info("udp: dropped: {}", exc)
                    continue
                if len(cleared) < 1024:
                    cleared.add((ip, dest.port))
            transport.sendto(packet.data, _sockaddr(ip, dest.port, dual))

    try:
        await run_pumps([uplink()], activity, policy.conn_idle)
    finally:
        transport.close()
