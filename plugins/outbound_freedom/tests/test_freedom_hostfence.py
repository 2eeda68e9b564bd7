"""freedom under the host fence (flows from a TUN): the host's own addresses are refused after
resolution and redirect, TCP and UDP; a redirect that names an IP is the operator's choice."""

from __future__ import annotations

import asyncio

from test_freedom import _cfg, _echo_once
from tunray.net.address import Destination, Network, parse_host
from tunray.net.hostfence import STRICT
from tunray.testing.harness import driver_of, running


async def test_fenced_tcp_to_loopback_and_localhost_is_refused(loopback_echo: int) -> None:
    async with running(_cfg({})) as rt:
        assert (await _echo_once(rt, f"tcp:127.0.0.1:{loopback_echo}")) == (True, b"hello")  # unfenced: as Xray
        driver_of(rt).host_fence = STRICT
        for target in (f"tcp:127.0.0.1:{loopback_echo}", f"tcp:localhost:{loopback_echo}"):
            ok, _ = await _echo_once(rt, target)
            assert not ok, target


async def test_a_redirect_naming_an_ip_is_explicit_one_keeping_the_host_is_not(loopback_echo: int) -> None:
    async with running(_cfg({"redirect": f"127.0.0.1:{loopback_echo}"})) as rt:
        driver_of(rt).host_fence = STRICT
        assert (await _echo_once(rt, "tcp:192.0.2.1:80")) == (True, b"hello")
    async with running(_cfg({"redirect": f":{loopback_echo}"})) as rt:
        driver_of(rt).host_fence = STRICT
        ok, _ = await _echo_once(rt, "tcp:127.0.0.1:9")
        assert not ok


async def test_fenced_udp_to_the_host_is_dropped() -> None:
    loop = asyncio.get_running_loop()
    seen: list[bytes] = []

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
            seen.append(data)
            self.transport.sendto(data, addr)  # type: ignore[attr-defined]

    server, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    port = server.get_extra_info("sockname")[1]
    target = Destination(Network.UDP, parse_host("127.0.0.1"), port)
    try:
        async with running(_cfg({})) as rt:
            drv = driver_of(rt)
            drv.host_fence = STRICT
            fenced, fenced_task = drv.open_udp("10.0.0.2:997", target)
            fenced.send(b"fenced", target)
            await asyncio.sleep(0.2)
            drv.host_fence = None
            free, free_task = drv.open_udp("10.0.0.2:996", target)
            free.send(b"free", target)
            assert (await asyncio.wait_for(free.recv(), 5)).data == b"free"
            assert seen == [b"free"], seen
            for app, task in ((fenced, fenced_task), (free, free_task)):
                app.close()
                await task
    finally:
        server.close()
