"""Benchmark: VLESS+REALITY+Vision versus VLESS+TLS+Vision through tunray, same Xray server.

    sudo .venv/bin/python plugins/security_reality/bench/bench_reality.py [--mib 200] [--conns 300]

(root: Xray runs as nobody inside a network namespace, as in the tests.)  One Xray
process serves both inbounds — REALITY on :4433 (its target a local TLS 1.3 site) and
TLS on :4434 — with ``flow: xtls-rprx-vision``, and forwards to tunray's echo servers.

Measured, for each security:

* **handshake**: the security layer alone (``wrap`` over a fresh TCP socket), mean wall
  ms and mean client-process CPU ms per handshake over ``--conns`` sequential ones.  The
  REALITY/TLS ratio is the figure the issue targets (≤ 1.2).  Wall time includes the
  server: a REALITY server first relays each hello to its target and waits for the
  target's whole TLS answer (here a Python asyncio TLS server in the same namespace),
  which no client can avoid; the CPU column is tunray's own cost;
* **connections/s**: whole flows, sequential: open, 8-byte echo, close;
* **echo MiB/s**: one stream, N MiB up and the same N MiB back at once;
* **download MiB/s**: one stream, N MiB from the echo kit's source port.

Smoke run (seconds): ``--mib 4 --conns 20``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from reality_peer import (  # noqa: E402
    ECHO,
    PORT,
    PUBLIC_KEY,
    SERVER_NAME,
    SHORT_ID,
    USER_ID,
    VISION,
    reality_peer,
)
from tunray.config.model import STREAM_SCHEMA  # noqa: E402
from tunray.net.address import Destination, Network, parse_host  # noqa: E402
from tunray.net.stream import open_stream  # noqa: E402
from tunray.testing.echo import pattern  # noqa: E402
from tunray.testing.harness import driver_of, running  # noqa: E402
from tunray.testing.throughput import download_mib_s, echo_mib_s  # noqa: E402
from tunray_reality.layer import RealitySecurity  # noqa: E402
from tunray_tls.layer import TlsSecurity  # noqa: E402

TLS_PORT = PORT + 1
BLOCK = 1 << 18


def _streams(cert_sha: str) -> dict[str, dict[str, Any]]:
    return {
        "reality": {
            "network": "raw",
            "security": "reality",
            "realitySettings": {"serverName": SERVER_NAME, "publicKey": PUBLIC_KEY, "shortId": SHORT_ID, "fingerprint": "chrome"},
        },
        "tls": {
            "network": "raw",
            "security": "tls",
            "tlsSettings": {"serverName": SERVER_NAME, "pinnedPeerCertSha256": cert_sha, "fingerprint": "chrome"},
        },
    }


def _tls_inbound() -> dict[str, Any]:
    return {
        "listen": "::",
        "port": TLS_PORT,
        "protocol": "vless",
        "settings": {"clients": [{"id": USER_ID, "flow": VISION}], "decryption": "none"},
        "streamSettings": {
            "network": "raw",
            "security": "tls",
            "tlsSettings": {"certificates": [{"certificateFile": "@server.crt", "keyFile": "@server.key"}]},
        },
    }


async def _handshakes(layer: Any, host: str, port: int, n: int) -> tuple[float, float]:
    """(wall ms, this process's CPU ms) per handshake, means over *n* sequential ones."""
    dest = Destination(Network.TCP, parse_host(host), port)
    loop = asyncio.get_running_loop()
    wall = cpu = 0.0
    for _ in range(n):
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, port))
        inner = await open_stream(sock)
        started, cpu0 = time.perf_counter(), time.process_time()
        stream = await layer.wrap(inner, dest)
        wall += time.perf_counter() - started
        cpu += time.process_time() - cpu0
        stream.abort()
    return wall / n * 1000, cpu / n * 1000


def _client(host: str, port: int, stream: dict[str, Any]) -> dict[str, Any]:
    return {
        "log": {"loglevel": "none", "access": "none"},
        "inbounds": [{"protocol": "driver"}],
        "outbounds": [
            {
                "protocol": "vless",
                "settings": {"address": host, "port": port, "id": USER_ID, "encryption": "none", "flow": VISION},
                "streamSettings": stream,
            }
        ],
    }


async def _flows(drv: Any, n: int) -> float:
    """Whole flows per second: ask the echo kit's source for 8 bytes; it sends them and closes."""
    target = Destination(Network.TCP, parse_host("127.0.0.1"), ECHO + 1)
    started = time.monotonic()
    for i in range(n):
        app, task = drv.open_tcp(f"10.0.0.2:{20000 + i}", target)
        await app.send(struct.pack("!Q", 8))
        assert await app.recv_exactly(8) == pattern(8)
        app.shutdown_write()
        await app.recv_all()
        await task
    return n / (time.monotonic() - started)


async def main(mib: int, conns: int, decoy: str) -> None:
    size = max(BLOCK, mib << 20) // BLOCK * BLOCK
    extra_inbound = _tls_inbound()
    with reality_peer(VISION, extra_inbounds=[extra_inbound], decoy=decoy) as peer:
        host = peer.host.v4
        streams = _streams(peer.cert.sha256_hex)
        rows: dict[str, dict[str, float]] = {}
        for name, port in (("reality", PORT), ("tls", TLS_PORT)):
            settings = STREAM_SCHEMA.parse(streams[name], "streamSettings")
            layer = RealitySecurity(settings) if name == "reality" else TlsSecurity(settings)
            await _handshakes(layer, host, port, 3)  # warm-up
            wall, cpu = await _handshakes(layer, host, port, conns)
            row = {"handshake ms": wall, "client CPU ms": cpu}
            async with running(_client(host, port, streams[name])) as rt:
                drv = driver_of(rt)
                row["conn/s"] = await _flows(drv, conns)
                row["echo MiB/s"] = await echo_mib_s(drv, ECHO, size)
                row["download MiB/s"] = await download_mib_s(drv, ECHO, size)
            rows[name] = row
    cols = ["handshake ms", "client CPU ms", "conn/s", "echo MiB/s", "download MiB/s"]
    print(f"{'VLESS+Vision over':<18}" + "".join(f"{c:>16}" for c in cols))
    for name, row in rows.items():
        print(f"{name:<18}" + "".join(f"{row[c]:>16.2f}" for c in cols))
    ratio = rows["reality"]["handshake ms"] / rows["tls"]["handshake ms"]
    cpu_ratio = rows["reality"]["client CPU ms"] / rows["tls"]["client CPU ms"]
    print(
        f"REALITY/TLS handshake: wall {ratio:.2f}, client CPU {cpu_ratio:.2f} (target <= 1.2); "
        f"sizes {size >> 20} MiB, {conns} handshakes/flows"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=200, help="MiB per throughput run")
    ap.add_argument("--conns", type=int, default=300, help="sequential handshakes / flows")
    ap.add_argument("--decoy", choices=("openssl", "python"), default="openssl", help="REALITY's target TLS server")
    args = ap.parse_args()
    asyncio.run(main(args.mib, args.conns, args.decoy))
