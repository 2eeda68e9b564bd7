"""VLESS over REALITY (with and without XTLS Vision) against Xray-core itself, in a namespace.

See :mod:`reality_peer` for the topology.  Bulk transfers are SHA-256 checked; the
Vision test tunnels inner TLS so that Xray switches its downlink to raw TCP (command
02) and the client must follow at the exact record boundary.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger
from reality_peer import (
    ECHO,
    ECHO_NAME,
    PORT,
    SERVER_NAME,
    TLS_ECHO,
    USER_ID,
    VISION,
    InnerTls,
    RealityPeer,
    reality_peer,
)
from tunray.config.model import STREAM_SCHEMA
from tunray.net.address import Destination, Network, parse_host
from tunray.net.stream import SocketStream, open_stream
from tunray.testing.flows import concurrent_echo, echo_bulk, killed_server_resets, udp_echo
from tunray.testing.harness import driver_of, running
from tunray_reality.errors import RealityRefused
from tunray_reality.layer import RealitySecurity

pytestmark = pytest.mark.root
MIB = 1 << 20
CONFIGS = Path(__file__).resolve().parents[3] / "configs"
WRONG_PUBLIC_KEY = "68pxxtPEtgFme62H0y1sagjyHy4UL4xuaS8O3w-F0w0"  # another key pair's public key


def _dest(port: int, host: str = "127.0.0.1", network: Network = Network.TCP) -> Destination:
    return Destination(network, parse_host(host), port)


@pytest.fixture(scope="module")
def vision_peer() -> Iterator[RealityPeer]:
    with reality_peer(VISION) as peer:
        yield peer


@pytest.fixture(scope="module")
def plain_peer() -> Iterator[RealityPeer]:
    with reality_peer("") as peer:
        yield peer


@pytest.mark.timeout(240)
async def test_reality_vision_50mib_each_way_inner_tls_switches_to_raw(vision_peer: RealityPeer) -> None:
    """Inner TLS 1.3 through Vision: Xray sends command 02 and the downlink leaves REALITY."""
    size = 50 * MIB
    switches: list[str] = []
    # our own record of the switch: Xray's logger drops lines when its 16-slot queue is full
    sink = logger.add(lambda m: switches.append(str(m)), level="DEBUG", filter=lambda r: "vision downlink switched" in r["message"])
    async with running(vision_peer.client()) as rt:
        drv = driver_of(rt)
        app, task = drv.open_tcp("10.0.0.2:40000", _dest(TLS_ECHO))
        inner = InnerTls(app, vision_peer.cert)
        await inner.handshake()
        payload = os.urandom(size)

        async def upload() -> None:
            for i in range(0, size, 1 << 17):
                await inner.send(payload[i : i + (1 << 17)])

        async def download() -> bytes:
            h = hashlib.sha256()
            n = 0
            while n < size:
                chunk = await inner.recv()
                assert chunk, f"inner TLS ended after {n} bytes"
                h.update(chunk)
                n += len(chunk)
            return h.digest()

        _, digest = await asyncio.gather(upload(), download())
        assert digest == hashlib.sha256(payload).digest()
        app.shutdown_write()
        await asyncio.wait_for(task, 10)
    logger.remove(sink)
    assert len(switches) == 1, switches  # Xray sent command 02 and our downlink left REALITY for the raw socket


@pytest.mark.timeout(240)
@pytest.mark.parametrize("which", ["vision", "plain"])
async def test_reality_50mib_each_way_plain_payload(which: str, vision_peer: RealityPeer, plain_peer: RealityPeer) -> None:
    peer = vision_peer if which == "vision" else plain_peer
    async with running(peer.client(VISION if which == "vision" else "")) as rt:
        await echo_bulk(driver_of(rt), _dest(ECHO), 50 * MIB)


@pytest.mark.timeout(120)
async def test_reality_vision_domain_resolved_by_server(vision_peer: RealityPeer) -> None:
    """The destination is a name only Xray's dns.hosts knows."""
    async with running(vision_peer.client()) as rt:
        await echo_bulk(driver_of(rt), _dest(ECHO, ECHO_NAME), 1 * MIB)


@pytest.mark.timeout(180)
async def test_reality_vision_100_concurrent_flows(vision_peer: RealityPeer) -> None:
    async with running(vision_peer.client()) as rt:
        await concurrent_echo(driver_of(rt), _dest(ECHO), 100)


@pytest.mark.timeout(120)
async def test_reality_vision_udp_echo_over_xudp(vision_peer: RealityPeer) -> None:
    async with running(vision_peer.client()) as rt:
        await udp_echo(driver_of(rt), _dest(ECHO, network=Network.UDP))


class _Recorder:
    """An inner stream that records what the layer writes (a socket under it)."""

    def __init__(self, inner: SocketStream) -> None:
        self.inner = inner
        self.written: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.written.append(bytes(data))
        await self.inner.write(data)

    async def read(self, max_bytes: int = 65536) -> bytes:
        return await self.inner.read(max_bytes)

    def abort(self) -> None:
        self.inner.abort()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "override",
    [{"publicKey": WRONG_PUBLIC_KEY}, {"shortId": "0123456789abcdee"}, {"shortId": ""}],
    ids=["wrong-key", "wrong-shortId", "empty-shortId"],
)
async def test_reality_refuses_the_decoy_and_sends_nothing_after_the_hello(
    override: dict[str, str], vision_peer: RealityPeer
) -> None:
    """Xray hands an unauthenticated hello to its target; tunray sees a real certificate and fails closed."""
    cfg = vision_peer.client(**override)
    stream = cfg["outbounds"][0]["streamSettings"]
    layer = RealitySecurity(STREAM_SCHEMA.parse(stream, "streamSettings"))
    sock = await asyncio.get_running_loop().run_in_executor(
        None, lambda: socket.create_connection((vision_peer.host.v4, PORT), timeout=5)
    )
    sock.setblocking(False)
    recorder = _Recorder(await open_stream(sock))
    with pytest.raises(RealityRefused):
        await layer.wrap(recorder, _dest(PORT, vision_peer.host.v4))
    recorder.abort()
    assert len(recorder.written) == 1 and recorder.written[0][:1] == b"\x16"  # the ClientHello record only
    assert vision_peer.xray.wait_for_log("hs.c.conn == conn: false")  # Xray forwarded it to the decoy

    async with running(cfg) as rt:  # and through the outbound: the app's flow is reset
        app, task = driver_of(rt).open_tcp("10.0.0.2:40000", _dest(ECHO))
        await app.send(b"hello")
        assert await app.recv_all() == b""
        await asyncio.wait_for(task, 10)
        assert app.reset


@pytest.mark.timeout(60)
async def test_reality_wrong_uuid_resets_the_flow(vision_peer: RealityPeer) -> None:
    cfg = vision_peer.client()
    cfg["outbounds"][0]["settings"]["id"] = "11111111-2222-3333-4444-555555555555"
    async with running(cfg) as rt:
        app, task = driver_of(rt).open_tcp("10.0.0.2:40000", _dest(ECHO))
        await app.send(b"hello")
        assert await app.recv_all() == b""
        await asyncio.wait_for(task, 10)
        assert app.reset
    assert vision_peer.xray.wait_for_log("invalid request user id")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("flow", [VISION, ""])
async def test_reality_server_killed_mid_transfer_resets_the_app(flow: str) -> None:
    with reality_peer(flow) as peer:
        async with running(peer.client(flow)) as rt:
            await killed_server_resets(driver_of(rt), _dest(ECHO), peer.xray.proc.kill)


def _example(name: str, peer: RealityPeer) -> dict[str, Any]:
    """configs/*name* as shipped, pointed at *peer* (address, port, id, serverName), driver inbound."""
    cfg: dict[str, Any] = json.loads((CONFIGS / name).read_text())
    (proxy,) = [ob for ob in cfg["outbounds"] if ob["protocol"] == "vless"]
    server = proxy["settings"]["vnext"][0]
    server["address"], server["port"] = peer.host.v4, PORT
    server["users"][0]["id"] = USER_ID
    proxy["streamSettings"]["realitySettings"]["serverName"] = SERVER_NAME
    cfg["inbounds"] = [{"protocol": "driver", "tag": "drv"}]
    cfg["log"] = {"loglevel": "none", "access": "none"}
    cfg["routing"]["rules"] = [r for r in cfg["routing"]["rules"] if "ip" not in r]  # the echo is on 127.0.0.1 behind Xray
    return cfg


@pytest.mark.timeout(60)
async def test_example_reality_vision_config_carries_traffic(vision_peer: RealityPeer) -> None:
    async with running(_example("vless-reality-vision.json", vision_peer)) as rt:
        await echo_bulk(driver_of(rt), _dest(ECHO), 1 * MIB)


# -- REALITY under XHTTP (Xray 24.11.21 serves packet-up and stream-up; stream-one came later) --

XHTTP_MODES = ["packet-up", "stream-up"]


@pytest.fixture(scope="module")
def xhttp_peer() -> Iterator[RealityPeer]:
    with reality_peer("", {"network": "xhttp", "xhttpSettings": {"path": "/assets", "mode": "auto"}}) as peer:
        yield peer


def _xhttp_client(peer: RealityPeer, mode: str) -> dict[str, object]:
    cfg = peer.client("", network="xhttp")
    cfg["outbounds"][0]["streamSettings"]["xhttpSettings"] = {"path": "/assets", "mode": mode}  # type: ignore[index]
    return cfg


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", XHTTP_MODES)
async def test_reality_xhttp_50mib_each_way(mode: str, xhttp_peer: RealityPeer) -> None:
    async with running(_xhttp_client(xhttp_peer, mode)) as rt:
        await echo_bulk(driver_of(rt), _dest(ECHO), 50 * MIB)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", XHTTP_MODES)
async def test_reality_xhttp_flows_udp_and_domain(mode: str, xhttp_peer: RealityPeer) -> None:
    async with running(_xhttp_client(xhttp_peer, mode)) as rt:
        drv = driver_of(rt)
        await concurrent_echo(drv, _dest(ECHO), 100)
        await udp_echo(drv, _dest(ECHO, network=Network.UDP))
        await echo_bulk(drv, _dest(ECHO, ECHO_NAME), 1 * MIB)


@pytest.mark.timeout(60)
async def test_reality_xhttp_stream_one_refused_by_an_older_server_resets(xhttp_peer: RealityPeer) -> None:
    """auto under REALITY is stream-one (current Xray); Xray 24.11.21 answers it 400: the flow is reset."""
    async with running(_xhttp_client(xhttp_peer, "auto")) as rt:
        app, task = driver_of(rt).open_tcp("10.0.0.2:40000", _dest(ECHO))
        await app.send(b"hello")
        assert await app.recv_all() == b""
        await asyncio.wait_for(task, 10)
        assert app.reset


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", XHTTP_MODES)
async def test_reality_xhttp_faults(mode: str, xhttp_peer: RealityPeer) -> None:
    for override in ({"publicKey": WRONG_PUBLIC_KEY}, {"shortId": "0123456789abcdee"}, {"id": "11111111-2222-3333-4444-555555555555"}):
        cfg = _xhttp_client(xhttp_peer, mode)
        outbound = cfg["outbounds"][0]  # type: ignore[index]
        if "id" in override:
            outbound["settings"]["id"] = override["id"]
        else:
            outbound["streamSettings"]["realitySettings"].update(override)
        async with running(cfg) as rt:
            app, task = driver_of(rt).open_tcp("10.0.0.2:40000", _dest(ECHO))
            await app.send(b"hello")
            assert await app.recv_all() == b"", override
            await asyncio.wait_for(task, 15)
            assert app.reset, override


@pytest.mark.timeout(120)
async def test_example_xhttp_reality_config_carries_traffic(xhttp_peer: RealityPeer) -> None:
    cfg = _example("vless-xhttp-reality.json", xhttp_peer)
    # The example says "auto" (stream-one under REALITY, as current Xray); the pinned
    # Xray 24.11.21 predates stream-one, so the mode is the one change made here.
    cfg["outbounds"][0]["streamSettings"]["xhttpSettings"]["mode"] = "stream-up"
    async with running(cfg) as rt:
        await echo_bulk(driver_of(rt), _dest(ECHO), 1 * MIB)


@pytest.mark.timeout(120)
async def test_reality_xhttp_server_killed_mid_transfer_resets_the_app() -> None:
    with reality_peer("", {"network": "xhttp", "xhttpSettings": {"path": "/assets"}}) as peer:
        async with running(_xhttp_client(peer, "stream-up")) as rt:
            await killed_server_resets(driver_of(rt), _dest(ECHO), peer.xray.proc.kill)


@pytest.mark.timeout(120)
async def test_reality_grpc() -> None:
    """REALITY under gRPC (Xray allows raw, xhttp and grpc): HTTP/2 straight over REALITY."""
    with reality_peer("", {"network": "grpc", "grpcSettings": {"serviceName": "tunsvc"}}) as peer:
        cfg = peer.client("", network="grpc")
        cfg["outbounds"][0]["streamSettings"]["grpcSettings"] = {"serviceName": "tunsvc"}
        async with running(cfg) as rt:
            drv = driver_of(rt)
            await echo_bulk(drv, _dest(ECHO), 8 * MIB)
            await concurrent_echo(drv, _dest(ECHO), 20)
