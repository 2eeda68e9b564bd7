"""VLESS over XHTTP over TLS (HTTP/2 by ALPN) against Xray-core itself, in a namespace.

Xray 24.11.21 (the pinned peer) serves the ``packet-up`` and ``stream-up`` modes
(``stream-one`` came in a later Xray: against this server it is answered 400, which
must reset the flow).  The server runs ``mode: auto`` (accepting both) and, per mode,
a server restricted to that mode.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tunray.net.address import Destination, Network, parse_host
from tunray.testing.certs import SelfSigned, make_cert
from tunray.testing.flows import concurrent_echo, echo_bulk, killed_server_resets, udp_echo
from tunray.testing.harness import driver_of, running
from tunray.testing.peerhost import PeerHost
from tunray.testing.xray import RunningXray, start_xray, vless_server

pytestmark = pytest.mark.root
USER_ID = "b831381d-6324-4d53-ad4f-8cda48b30811"
ECHO, PORT, MIB = 7000, 4433, 1 << 20
ECHO_NAME = "echo.test"
MODES = ["packet-up", "stream-up"]


@dataclass
class XhttpPeer:
    host: PeerHost
    xray: RunningXray
    cert: SelfSigned
    tls: bool = True

    def client(self, mode: str, alpn: list[str] | None = None, **xhttp: Any) -> dict[str, Any]:
        settings = {"path": "/xh?ed=1", "mode": mode, **xhttp}
        tls: dict[str, Any] = {"serverName": "xhttp.test", "pinnedPeerCertSha256": self.cert.sha256_hex}
        if alpn is not None:
            tls["alpn"] = alpn
        security: dict[str, Any] = {"security": "tls", "tlsSettings": tls} if self.tls else {}
        return {
            "log": {"loglevel": "warning", "access": "none"},
            "inbounds": [{"protocol": "driver"}],
            "outbounds": [
                {
                    "protocol": "vless",
                    "settings": {"address": self.host.v4, "port": PORT, "id": USER_ID, "encryption": "none"},
                    "streamSettings": {"network": "xhttp", "xhttpSettings": settings, **security},
                }
            ],
        }


def _start(tmp: Path, mode: str = "auto", tls: bool = True) -> XhttpPeer:
    host = PeerHost.create()
    try:
        host.start_echo(ECHO)
        cert = make_cert(tmp, names=("xhttp.test",))
        stream: dict[str, Any] = {"network": "xhttp", "xhttpSettings": {"path": "/xh", "mode": mode}}
        if tls:
            stream["security"] = "tls"
            stream["tlsSettings"] = {"certificates": [{"certificateFile": "@server.crt", "keyFile": "@server.key"}]}
        cfg = vless_server(PORT, USER_ID, stream=stream, loglevel="info")
        cfg["dns"] = {"hosts": {ECHO_NAME: "127.0.0.1"}}
        xray = start_xray(host, cfg, port=PORT, files={"server.crt": cert.cert_pem, "server.key": cert.key_pem})
        return XhttpPeer(host, xray, cert, tls)
    except BaseException:
        host.remove()
        raise


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XhttpPeer]:
    p = _start(tmp_path_factory.mktemp("xhttp"))
    try:
        yield p
    finally:
        p.xray.stop()
        p.host.remove()


def _dest(port: int, host: str = "127.0.0.1", network: Network = Network.TCP) -> Destination:
    return Destination(network, parse_host(host), port)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", MODES)
async def test_xhttp_tls_50mib_each_way(mode: str, peer: XhttpPeer) -> None:
    async with running(peer.client(mode)) as rt:
        await echo_bulk(driver_of(rt), _dest(ECHO), 50 * MIB)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", MODES)
async def test_xhttp_tls_flows_udp_domain(mode: str, peer: XhttpPeer) -> None:
    async with running(peer.client(mode, scMaxEachPostBytes="50000-100000", scMinPostsIntervalMs=10)) as rt:
        drv = driver_of(rt)
        await concurrent_echo(drv, _dest(ECHO), 100)
        await udp_echo(drv, _dest(ECHO, network=Network.UDP))
        await echo_bulk(drv, _dest(ECHO, ECHO_NAME), 2 * MIB)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", MODES)
async def test_xhttp_mode_restricted_server(mode: str, tmp_path: Path) -> None:
    """A server fixed to one mode carries that mode and refuses the other (the flow resets)."""
    p = _start(tmp_path, mode)
    try:
        async with running(p.client(mode)) as rt:
            await echo_bulk(driver_of(rt), _dest(ECHO), 1 * MIB)
        other = "stream-up" if mode == "packet-up" else "packet-up"
        async with running(p.client(other)) as rt:
            app, task = driver_of(rt).open_tcp("10.0.0.2:40000", _dest(ECHO))
            await app.send(b"hello")
            assert await app.recv_all() == b""
            await asyncio.wait_for(task, 15)
            assert app.reset
    finally:
        p.xray.stop()
        p.host.remove()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("change", ["uuid", "path", "stream-one"])
async def test_xhttp_refusals_reset_the_flow(change: str, peer: XhttpPeer) -> None:
    cfg = peer.client("stream-one" if change == "stream-one" else "packet-up")
    out = cfg["outbounds"][0]
    if change == "uuid":
        out["settings"]["id"] = "11111111-2222-3333-4444-555555555555"
    elif change == "path":
        out["streamSettings"]["xhttpSettings"]["path"] = "/elsewhere"
    async with running(cfg) as rt:
        app, task = driver_of(rt).open_tcp("10.0.0.2:40000", _dest(ECHO))
        await app.send(b"hello")
        assert await app.recv_all() == b""
        await asyncio.wait_for(task, 15)
        assert app.reset


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", MODES)
async def test_xhttp_server_killed_mid_transfer_resets_the_app(mode: str, tmp_path: Path) -> None:
    p = _start(tmp_path)
    try:
        async with running(p.client(mode)) as rt:
            await killed_server_resets(driver_of(rt), _dest(ECHO), p.xray.proc.kill)
    finally:
        p.xray.stop()
        p.host.remove()


# -- HTTP/1.1: TLS with alpn ["http/1.1"], and no TLS at all (Xray's rule for HTTP/1.1) --


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", MODES)
async def test_xhttp_http11_over_tls(mode: str, peer: XhttpPeer) -> None:
    async with running(peer.client(mode, alpn=["http/1.1"])) as rt:
        drv = driver_of(rt)
        await echo_bulk(drv, _dest(ECHO), 50 * MIB)
        await concurrent_echo(drv, _dest(ECHO), 100)
        await udp_echo(drv, _dest(ECHO, network=Network.UDP))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", MODES)
async def test_xhttp_plain_http11(mode: str, tmp_path: Path) -> None:
    p = _start(tmp_path, tls=False)
    try:
        async with running(p.client(mode)) as rt:
            drv = driver_of(rt)
            await echo_bulk(drv, _dest(ECHO), 8 * MIB)
            await concurrent_echo(drv, _dest(ECHO), 20)
        p.xray.proc.kill()  # and a killed server resets a flow
        async with running(p.client(mode)) as rt:
            app, task = driver_of(rt).open_tcp("10.0.0.2:40000", _dest(ECHO))
            await app.send(b"hello")
            assert await app.recv_all() == b""
            await asyncio.wait_for(task, 15)
            assert app.reset
    finally:
        p.xray.stop()
        p.host.remove()
