"""A whole runtime: driver inbound -> ``vless`` outbound over ws/httpupgrade/grpc -> sing-box -> echo.

Skipped while no ``vless`` outbound is installed (it is another distribution).
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest
from transport_std_peers import EARLY, SERVICE, TLS_NAME, UPGRADE_PATH, USER_ID, WS_PATH, SingBox
from tunray.net.address import Destination, Network, parse_host
from tunray.plugin.manager import PluginManager
from tunray.testing.echo import pattern
from tunray.testing.harness import driver_of, running

pytestmark = pytest.mark.skipif(
    "vless" not in PluginManager().registry.outbounds, reason="the vless outbound plugin is not installed"
)

# WebSocket cannot half-close, so those flows end by the downlinkOnly timer after the echo.
POLICY = {"levels": {"0": {"handshake": 4, "connIdle": 30, "uplinkOnly": 1, "downlinkOnly": 1}}}

CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "ws": ("ws", {"network": "ws", "wsSettings": {"path": WS_PATH}}),
    "ws-early-data": ("ws-ed", {"network": "ws", "wsSettings": {"path": f"{WS_PATH}?ed={EARLY}"}}),
    "httpupgrade": (
        "httpupgrade",
        {"network": "httpupgrade", "httpupgradeSettings": {"path": UPGRADE_PATH, "host": "cdn.example"}},
    ),
    "grpc": ("grpc", {"network": "grpc", "grpcSettings": {"serviceName": SERVICE}}),
}


def config(box: SingBox, case: str, ca: Path | None = None) -> dict[str, Any]:
    inbound, stream = CASES[case]
    if ca is not None:
        alpn = ["h2"] if stream["network"] == "grpc" else ["http/1.1"]
        tls = {
            "serverName": TLS_NAME,
            "alpn": alpn,
            "certificates": [{"usage": "verify", "certificateFile": str(ca)}],
        }
        stream = {**stream, "security": "tls", "tlsSettings": tls}
    return {
        "log": {"loglevel": "none", "access": "none"},
        "inbounds": [{"protocol": "driver"}],
        "outbounds": [
            {
                "protocol": "vless",
                "tag": "proxy",
                "settings": {
                    "address": "127.0.0.1",
                    "port": box.ports[inbound],
                    "id": USER_ID,
                    "encryption": "none",
                },
                "streamSettings": stream,
            }
        ],
        "policy": POLICY,
    }


async def echo_through(drv: Any, echo_port: int, size: int, source_port: int) -> None:
    target = Destination(Network.TCP, parse_host("127.0.0.1"), echo_port)
    app, task = drv.open_tcp(f"10.0.0.2:{source_port}", target)
    payload = pattern(size, source_port)

    async def send() -> None:
        for i in range(0, size, 1 << 18):
            await app.send(payload[i : i + (1 << 18)])
        app.shutdown_write()

    sender = asyncio.create_task(send())
    digest = hashlib.sha256()
    received = 0
    try:
        while received < size and (chunk := await app.recv(1 << 20)):
            digest.update(chunk)
            received += len(chunk)
    finally:
        await sender
        await asyncio.wait_for(task, 10)
    assert received == size, f"echo returned {received} of {size} bytes"
    assert digest.digest() == hashlib.sha256(payload).digest()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", sorted(CASES))
async def test_vless_over_transport_bulk_and_concurrent(case: str, sing_box: SingBox, echo_port: int) -> None:
    async with running(config(sing_box, case)) as rt:
        drv = driver_of(rt)
        await echo_through(drv, echo_port, 10 << 20, 40000)
        await asyncio.gather(*(echo_through(drv, echo_port, 200_000 + i, 41000 + i) for i in range(8)))


@pytest.mark.parametrize("case", ["ws", "grpc"])
async def test_vless_udp_over_transport(case: str, sing_box: SingBox, echo_port: int) -> None:
    async with running(config(sing_box, case)) as rt:
        target = Destination(Network.UDP, parse_host("127.0.0.1"), echo_port)
        app, task = driver_of(rt).open_udp("10.0.0.2:5353", target)
        for i in range(5):
            app.send(b"dgram-%d" % i, target)
        got = {(await asyncio.wait_for(app.recv(), 5)).data for _ in range(5)}
        assert got == {b"dgram-%d" % i for i in range(5)}
        app.close()
        await asyncio.wait_for(task, 10)


@pytest.mark.skipif(
    "security:tls" not in PluginManager().registry.transports, reason="no TLS plugin installed"
)
@pytest.mark.parametrize("case", sorted(CASES))
async def test_vless_over_transport_over_tls(
    case: str, sing_box_tls: tuple[SingBox, Path], echo_port: int
) -> None:
    box, ca = sing_box_tls
    async with running(config(box, case, ca)) as rt:
        drv = driver_of(rt)
        await echo_through(drv, echo_port, 4 << 20, 43000)
        await asyncio.gather(*(echo_through(drv, echo_port, 100_000 + i, 44000 + i) for i in range(4)))
