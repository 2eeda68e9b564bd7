"""VLESS across a veth pair: tunray in the client namespace, the server and echo in the server one.

Here the echo can sit on ports 53 and 443, so the plain UDP framing (command 02,
which Xray keeps for those ports) is exercised against real servers, over IPv4 and IPv6,
for every server configuration of :data:`vless_servers.KINDS`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_vless_interop import POLICY, _echo_bulk
from tunray.net.address import Destination, Network
from tunray.testing.certs import make_cert
from tunray.testing.harness import driver_of, running
from tunray.testing.netns import Topology
from vless_servers import KINDS, kind_outbound, start_kind


@pytest.fixture
def topo() -> Iterator[Topology]:
    t = Topology.create(prefix="tv")
    try:
        yield t
    finally:
        t.remove()


@pytest.mark.root
@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", list(KINDS))
async def test_udp_both_framings_and_ipv6_over_veth(kind: str, topo: Topology, tmp_path: Path) -> None:
    topo.start_echo(port=53)  # TCP 53-55; UDP 53, 54 (cone probe), 56
    topo.start_echo(port=443)
    prefix = ["ip", "netns", "exec", topo.server]
    cert = make_cert(tmp_path, ips=(str(topo.server_v4), str(topo.server_v6)))
    spec = KINDS[kind]
    srv = start_kind(spec, tmp_path, cert, host="::", port=10443, prefix=prefix)
    srv.host = str(topo.server_v4)
    ob = kind_outbound(spec, srv, cert)
    cfg = {"log": {"loglevel": "none", "access": "none"}, "inbounds": [{"protocol": "driver"}], "outbounds": [ob], "policy": POLICY}
    try:
        with topo.enter(topo.client):
            async with running(cfg) as rt:
                drv = driver_of(rt)
                ports = [53] if spec.flow else [53, 443]  # Vision refuses UDP/443
                for peer in (topo.server_v4, topo.server_v6):
                    for port in ports:
                        target = Destination(Network.UDP, peer, port)
                        app, task = drv.open_udp(f"10.0.0.2:{5000 + port}", target)
                        for i in range(5):
                            app.send(b"dns-%d" % i, target)
                        got = {(await asyncio.wait_for(app.recv(), 5)).data for _ in range(5)}
                        assert got == {b"dns-%d" % i for i in range(5)}, (peer, port)
                        app.close()
                        await asyncio.wait_for(task, 5)
                    await _echo_bulk(drv, Destination(Network.TCP, peer, 53), 2 << 20, 40000 + peer.version)
    finally:
        srv.stop()
