"""The ``vless`` outbound against Xray-core itself (the pinned test peer, run as nobody in a namespace).

The wider matrices (transports, REALITY, XHTTP) build on the same runner; this module
checks the peer is the pinned binary, runs unprivileged, and carries VLESS over raw TCP
and TLS both ways byte for byte.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tunray.net.address import Destination, Network, parse_host
from tunray.testing.certs import make_cert
from tunray.testing.harness import driver_of, running
from tunray.testing.peerhost import PeerHost
from tunray.testing.xray import XRAY_VERSION, start_xray, vless_server, xray_path
from vless_servers import USER_ID

pytestmark = pytest.mark.root
ECHO = 7000
PORT = 4433


@pytest.fixture
def peer() -> Iterator[PeerHost]:
    host = PeerHost.create()
    try:
        host.start_echo(ECHO)
        yield host
    finally:
        host.remove()


def _uid_of(pid: int) -> tuple[str, str]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return fields["Uid"].split()[0], fields["Gid"].split()[0]


def test_pinned_binary_reports_its_version() -> None:
    import subprocess

    out = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(xray_path()), "version"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert out.startswith(f"Xray {XRAY_VERSION} ")


async def _bulk(drv: Any, target: Destination, size: int) -> None:
    app, task = drv.open_tcp("10.0.0.2:40000", target)
    payload = os.urandom(size)

    async def send() -> None:
        for i in range(0, size, 1 << 18):
            await app.send(payload[i : i + (1 << 18)])
        app.shutdown_write()

    sender = asyncio.create_task(send())
    got = bytearray()
    while chunk := await app.recv(1 << 20):
        got += chunk
    await sender
    await task
    assert len(got) == size
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


@pytest.mark.parametrize("security", ["none", "tls"])
@pytest.mark.timeout(60)
async def test_vless_to_xray_both_ways(security: str, peer: PeerHost, tmp_path: Path) -> None:
    cert = make_cert(tmp_path)
    stream: dict[str, Any] = {"network": "raw"}
    files: dict[str, str | bytes] = {}
    if security == "tls":
        files = {"server.crt": cert.cert_pem, "server.key": cert.key_pem}
        stream.update(
            security="tls",
            tlsSettings={"certificates": [{"certificateFile": "@server.crt", "keyFile": "@server.key"}]},
        )
    xray = start_xray(peer, vless_server(PORT, USER_ID, stream=stream), port=PORT, files=files)
    try:
        assert _uid_of(xray.proc.pid) == ("65534", "65534")
        client_stream: dict[str, Any] = {"network": "raw"}
        if security == "tls":
            client_stream.update(security="tls", tlsSettings={"serverName": "vless.test", "pinnedPeerCertSha256": cert.sha256_hex})
        cfg = {
            "log": {"loglevel": "none", "access": "none"},
            "inbounds": [{"protocol": "driver"}],
            "outbounds": [
                {
                    "protocol": "vless",
                    "tag": "xray",
                    "settings": {"address": peer.v4, "port": PORT, "id": USER_ID, "encryption": "none"},
                    "streamSettings": client_stream,
                }
            ],
        }
        async with running(cfg) as rt:
            await _bulk(driver_of(rt), Destination(Network.TCP, parse_host("127.0.0.1"), ECHO), 8 << 20)
    finally:
        xray.stop()
    assert "rejected" not in xray.log_text()
