"""The host fence through a real TUN: apps behind it may not reach the host's own services.

The listener on port 7777 runs in the namespace tunray runs in (its "host"), on every
address.  SYNs to 127.0.0.1 and to the TUN's own gateway address are injected into the
TUN with an AF_PACKET socket (the kernel would never route them there itself), as a
hostile LAN device would send them; a sniffed ``Host: localhost:7777`` comes from a
real app connection through the TUN.  Before the fence, all three reached the listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import tun_app
import tun_helpers
from tun_helpers import inject_tcp, sh, tcp_answer, topology, tun_config
from tunray.testing.harness import running
from tunray.testing.netns import Topology

pytestmark = pytest.mark.root

TUN = "trtun7"
GATEWAY = "172.19.7.1"
HOST4 = "203.0.113.10"  # a destination routed into the TUN
PORT = 7777
SPOOF = "203.0.113.77"  # the "LAN device" the injected SYNs come from


def _settings(**extra: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "name": TUN,
        "gateway": [f"{GATEWAY}/24"],
        "autoSystemRoutingTable": ["203.0.113.0/24"],
        "autoOutboundsInterface": "",
        "handshake": "lazy",
    }
    s.update(extra)
    return s


@contextlib.contextmanager
def _listener(topo: Topology) -> Iterator[socket.socket]:
    with topo.enter(topo.client):
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", PORT))
    srv.listen(16)
    srv.setblocking(False)
    try:
        yield srv
    finally:
        srv.close()


def _accepted(srv: socket.socket) -> int:
    n = 0
    while True:
        try:
            conn, _ = srv.accept()
        except BlockingIOError:
            return n
        conn.close()
        n += 1


async def _syn_answer(topo: Topology, dst: str, sport: int) -> int:
    cap = inject_tcp(topo, TUN, SPOOF, dst, sport, PORT, 0x02)
    try:
        return await tcp_answer(cap, sport)
    finally:
        cap.close()


RST, SYN_ACK = 0x04, 0x12


@pytest.mark.parametrize("dst", ["127.0.0.1", GATEWAY])
async def test_injected_syn_to_the_host_is_refused(dst: str) -> None:
    with topology() as topo, _listener(topo) as srv:
        cfg = tun_config(_settings(), {"protocol": "freedom", "tag": "direct"})
        with topo.enter(topo.client):
            async with running(cfg, extra=[tun_helpers]):
                flags = await _syn_answer(topo, dst, 40001)
                await asyncio.sleep(0.2)
                assert flags & RST, f"expected a reset, got flags {flags:#x}"
                assert _accepted(srv) == 0, f"a flow from the TUN reached {dst}:{PORT} on the host"


@pytest.mark.parametrize("dst", ["127.0.0.1", GATEWAY])
async def test_a_routing_rule_naming_the_address_lets_it_through(dst: str) -> None:
    with topology() as topo, _listener(topo) as srv:
        cfg = tun_config(
            _settings(),
            {"protocol": "blackhole", "tag": "block"},
            {"protocol": "freedom", "tag": "direct"},
            routing={"rules": [{"ip": [f"{dst}/32"], "port": PORT, "outboundTag": "direct"}]},
        )
        with topo.enter(topo.client):
            async with running(cfg, extra=[tun_helpers]):
                flags = await _syn_answer(topo, dst, 40002)
                assert flags == SYN_ACK, f"expected a SYN-ACK, got flags {flags:#x}"
                await asyncio.sleep(0.1)
                assert _accepted(srv) == 1


async def test_geoip_private_does_not_name_the_host() -> None:
    """A broad rule (``geoip:private`` -> direct, common in configs) is no exemption."""
    with topology() as topo, _listener(topo) as srv:
        cfg = tun_config(
            _settings(),
            {"protocol": "freedom", "tag": "direct"},
            routing={"rules": [{"ip": ["geoip:private"], "outboundTag": "direct"}]},
        )
        with topo.enter(topo.client):
            async with running(cfg, extra=[tun_helpers]):
                flags = await _syn_answer(topo, "127.0.0.1", 40003)
                await asyncio.sleep(0.2)
                assert flags & RST
                assert _accepted(srv) == 0


def _http_app(host: str, port: int, headers_host: str) -> bytes:
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(f"GET / HTTP/1.1\r\nHost: {headers_host}\r\n\r\n".encode())
        try:
            return s.recv(100)
        except ConnectionResetError:
            return b"<reset>"


@pytest.mark.parametrize("access", ["rules", "allow"])
async def test_sniffed_localhost(access: str) -> None:
    """``Host: localhost:7777`` from an app: fenced by default; ``hostAccess: allow`` is Xray's behaviour."""
    with topology() as topo, _listener(topo) as srv:
        cfg = tun_config(_settings(hostAccess=access), {"protocol": "freedom", "tag": "direct"})
        cfg["inbounds"][0]["sniffing"] = {"enabled": True, "destOverride": ["http"]}
        with topo.enter(topo.client):
            async with running(cfg, extra=[tun_helpers]):
                loop = asyncio.get_running_loop()

                async def serve() -> None:  # the host's "admin interface"
                    conn, _ = await loop.sock_accept(srv)
                    with conn:
                        await loop.sock_sendall(conn, b"ADMIN")

                server = asyncio.create_task(serve())

                def app() -> bytes:
                    with topo.enter(topo.client):
                        return _http_app(HOST4, PORT, f"localhost:{PORT}")

                got = await asyncio.to_thread(app)
                await asyncio.sleep(0.2)
                reached = server.done()
                server.cancel()
        if access == "rules":
            assert got == b"<reset>", got
            assert not reached, "the sniffed localhost reached the host's listener"
        else:
            assert got == b"ADMIN"
            assert reached


async def test_ordinary_destinations_still_work() -> None:
    """The fence costs nothing to normal traffic: TCP and UDP echo to a real server."""
    with topology() as topo:
        sh(topo.server, "ip", "addr", "add", f"{HOST4}/32", "dev", "lo")
        sh(topo.client, "ip", "route", "add", "default", "via", str(topo.server_v4))
        topo.start_echo(port=7000)
        freedom = {"protocol": "freedom", "tag": "direct", "streamSettings": {"sockopt": {"interface": topo.client_if}}}
        cfg = tun_config(_settings(), freedom)
        with topo.enter(topo.client):
            async with running(cfg, extra=[tun_helpers]):

                def app() -> int:
                    with topo.enter(topo.client):
                        return tun_app.tcp_echo(HOST4, 7000, 4096) + tun_app.udp_echo(HOST4, 7000, check_source=False)

                assert await asyncio.to_thread(app) == 4096 + 3


def _inject_udp(topo: Topology, dst: str, sport: int, payload: bytes) -> None:
    from tunray.testing.stackclient import ETH_P_IP, UDP, ipv4, udp_dgram

    with topo.enter(topo.client):
        out = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM)
    s, d = socket.inet_aton(SPOOF), socket.inet_aton(dst)
    with out:
        out.sendto(ipv4(s, d, UDP, udp_dgram(s, d, sport, PORT, payload)), (TUN, ETH_P_IP))


@pytest.mark.parametrize("exempt", [False, True])
async def test_injected_udp_to_the_host(exempt: bool) -> None:
    """A datagram to 127.0.0.1 from the TUN reaches the host's UDP service only if a rule names it."""
    with topology() as topo:
        with topo.enter(topo.client):
            srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        srv.bind(("0.0.0.0", PORT))
        srv.setblocking(False)
        routing = {"rules": [{"ip": ["127.0.0.1/32"], "outboundTag": "direct"}]} if exempt else {}
        cfg = tun_config(_settings(), {"protocol": "freedom", "tag": "direct"}, routing=routing)
        try:
            with topo.enter(topo.client):
                async with running(cfg, extra=[tun_helpers]) as rt:
                    _inject_udp(topo, "127.0.0.1", 40010, b"to-the-host")
                    loop = asyncio.get_running_loop()
                    if exempt:
                        data = await asyncio.wait_for(loop.sock_recv(srv, 100), 5)
                        assert data == b"to-the-host"
                    else:
                        for _ in range(250):  # the stack opened the flow (no event to wait on from here)
                            if tun_helpers.tun_of(rt).stats().get("udp_flows"):
                                break
                            await asyncio.sleep(0.02)
                        else:
                            raise AssertionError("the injected datagram never reached the stack")
                        await asyncio.sleep(0.3)  # the flow's first datagram was handled (and dropped)
                        with pytest.raises(BlockingIOError):
                            srv.recv(100)
        finally:
            srv.close()
