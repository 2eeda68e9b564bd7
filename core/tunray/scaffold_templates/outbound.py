"""Template: a direct outbound (TCP relay and full-cone UDP) and its conformance tests."""

from __future__ import annotations

MODULE = "outbound"

SOURCE = '''\
"""The ``$name`` outbound: carry each flow straight to its destination.

TCP: dial with the runtime's dialer (resolution strategy and ``sockopt`` applied),
accept the app's handshake only once connected (so a lazy stack answers a failed
dial with a reset), then relay both ways with the level's timeouts.

UDP: one unconnected socket per flow and ``sendto`` per packet; every reply reaches
the app with its real source address (full cone).  The flow ends after the level's
``connIdle`` seconds without a packet either way.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time

from tunray.config.schema import Enum, Field, Int, Schema, Settings
from tunray.link import ByteLink, PacketLink
from tunray.net.address import Destination, IPAddress, Network
from tunray.net.dialer import DialError
from tunray.net.sockopt import DOMAIN_STRATEGIES
from tunray.net.stream import open_stream
from tunray.outbound import Outbound
from tunray.policy import LevelPolicy
from tunray.relay import relay
from tunray.session import FlowContext


class _Replies(asyncio.DatagramProtocol):
    """Hands every datagram the socket receives to the app, with its real source."""

    def __init__(self, link: PacketLink, activity: list[float]) -> None:
        self.link = link
        self.activity = activity

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        ip = ipaddress.ip_address(str(addr[0]).split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        self.activity[0] = time.monotonic()
        self.link.send(data, Destination(Network.UDP, ip, int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors (port unreachable) do not end a full-cone flow


class $cls(Outbound):
    protocol = "$name"
    settings_schema = Schema(
        Field("domainStrategy", Enum(*DOMAIN_STRATEGIES), default="AsIs", doc="how to resolve domain targets"),
        Field("userLevel", Int(min=0), default=0, doc="policy level for timeouts and buffers"),
    )

    @property
    def _sockopt(self) -> Settings | None:
        stream = self.config.stream
        return stream.settings.sockopt if stream is not None else None

    async def process(self, ctx: FlowContext, link: ByteLink | PacketLink) -> None:
        policy = self.runtime.policy(self.settings.userLevel or ctx.user.level)
        if isinstance(link, PacketLink):
            await self._udp(link, policy)
            return
        sock = await self.runtime.dialer.connect_tcp(
            ctx.target,
            opts=self._sockopt,
            strategy=self.settings.domainStrategy,
            send_through=self.config.send_through,
            timeout=policy.handshake,
        )
        stream = await open_stream(sock, high_water=policy.buffer_size)
        try:
            await link.accept()
            await relay(link, stream, policy, ctx)
        except BaseException:
            stream.abort()
            raise
        await stream.aclose()

    async def _udp(self, link: PacketLink, policy: LevelPolicy) -> None:
        dialer = self.runtime.dialer
        try:  # dual-stack when the host has IPv6, so one flow reaches both families
            sock, dual = dialer.udp_socket(socket.AF_INET6, opts=self._sockopt), True
        except DialError:
            sock, dual = dialer.udp_socket(socket.AF_INET, opts=self._sockopt), False
        activity = [time.monotonic()]
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Replies(link, activity), sock=sock)
        resolved: dict[str, IPAddress] = {}
        try:
            while True:
                left = activity[0] + policy.conn_idle - time.monotonic()
                if left <= 0:
                    return
                try:
                    packet = await asyncio.wait_for(link.recv(), left)
                except TimeoutError:
                    continue  # a reply may have kept the flow alive: look again
                if packet is None:
                    return
                activity[0] = time.monotonic()
                dest = packet.peer
                ip = dest.ip
                if ip is None:
                    assert dest.domain is not None
                    ip = resolved.get(dest.domain)
                    if ip is None:
                        try:
                            ips = await dialer.resolve(dest, self.settings.domainStrategy)
                        except DialError:
                            continue  # unresolvable: drop the datagram, as a network would
                        usable = [i for i in ips if dual or i.version == 4]
                        if not usable:
                            continue
                        ip = resolved[dest.domain] = usable[0]
                if ip.version == 6 and not dual:
                    continue
                host = f"::ffff:{ip}" if dual and ip.version == 4 else str(ip)
                transport.sendto(packet.data, (host, dest.port))
        finally:
            transport.close()
'''

TEST = '''\
"""$name against real echo servers on loopback, through tunray's published conformance suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tunray.config.errors import ConfigError
from tunray.config.model import build_config
from tunray.plugin.manager import PluginManager
from tunray.testing.conformance import check_outbound


@pytest.fixture
def echo_port(echo_server: int) -> Iterator[int]:
    """tunray's echo servers on loopback (ports P..P+3), from the test kit; yields P."""
    yield echo_server


async def test_conformance(echo_port: int) -> None:
    await check_outbound({"protocol": "$name"}, "127.0.0.1", port=echo_port)


async def test_conformance_with_a_domain_target(echo_port: int) -> None:
    # UDP replies name the IP they came from, not the domain: check TCP only here.
    outbound = {"protocol": "$name", "settings": {"domainStrategy": "UseIPv4"}}
    await check_outbound(outbound, "localhost", port=echo_port, udp=False)


def test_bad_settings_name_the_json_path() -> None:
    raw = {"outbounds": [{"protocol": "$name", "settings": {"domainStrategy": "Sometimes"}}]}
    with pytest.raises(ConfigError) as info:
        build_config(raw, PluginManager().registry)
    assert info.value.path == "outbounds[0].settings.domainStrategy"
'''

FILES = {"$pkg/outbound.py": SOURCE, "tests/test_${name_id}.py": TEST}
