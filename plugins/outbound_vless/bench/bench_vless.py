"""Benchmark: tunray's vless outbound against sing-box as the client, same sing-box server.

    .venv/bin/python plugins/outbound_vless/bench/bench_vless.py [--mib 200] [--seconds 3]

Paths (all on loopback, sing-box VLESS server with a direct outbound to
:mod:`tunray.testing.echo`):

* tunray: driver inbound -> vless outbound (raw TCP / TLS / TLS+Vision) -> server -> sink
* sing-box: SOCKS5 client socket -> sing-box ``mixed`` inbound -> vless outbound -> server -> sink

Single-stream echo (N MiB up and the same N MiB back at once), single-stream
download (from the echo's source port) and TLS connections per second (sequential: connect,
8-byte echo, close).  Prints a table and the tunray/sing-box ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from tunray.net.address import Destination, Network, parse_host  # noqa: E402
from tunray.testing.certs import SelfSigned, make_cert  # noqa: E402
from tunray.testing.echo import pattern  # noqa: E402
from tunray.testing.harness import driver_of, running  # noqa: E402
from tunray.testing.throughput import download_mib_s, echo_mib_s  # noqa: E402
from vless_servers import USER_ID, RunningServer, free_port, sing_box_path, start_sing_box, vless_outbound  # noqa: E402

BLOCK = 1 << 18


# --- tunray as the client ----------------------------------------------------------------


async def _tunray_cps(drv: Any, echo: int, seconds: float) -> float:
    count = 0
    started = time.monotonic()
    target = Destination(Network.TCP, parse_host("127.0.0.1"), echo)
    while time.monotonic() - started < seconds:
        app, task = drv.open_tcp(f"10.0.0.2:{31000 + count % 20000}", target)
        await app.send(b"ping1234")
        assert await app.recv_exactly(8) == b"ping1234"
        app.shutdown_write()
        await app.recv_all()
        await task
        count += 1
    return count / (time.monotonic() - started)


async def bench_tunray(ob: dict[str, Any], echo: int, size: int, seconds: float) -> tuple[float, float, float]:
    cfg = {"log": {"loglevel": "none", "access": "none"}, "inbounds": [{"protocol": "driver"}], "outbounds": [ob]}
    async with running(cfg) as rt:
        drv = driver_of(rt)
        up = await echo_mib_s(drv, echo, size)
        down = await download_mib_s(drv, echo, size)
        cps = await _tunray_cps(drv, echo, seconds)
    return up, down, cps


# --- sing-box as the client (SOCKS5 in) ------------------------------------------------------


async def _socks(port: int, target_port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x05\x01\x00")
    assert await reader.readexactly(2) == b"\x05\x00"
    writer.write(b"\x05\x01\x00\x01" + bytes([127, 0, 0, 1]) + struct.pack("!H", target_port))
    reply = await reader.readexactly(10)
    assert reply[1] == 0, reply
    return reader, writer


async def bench_sing_box_client(port: int, echo: int, size: int, seconds: float) -> tuple[float, float, float]:
    reader, writer = await _socks(port, echo)
    block = pattern(BLOCK)
    started = time.monotonic()

    async def send() -> None:
        for _ in range(size // BLOCK):
            writer.write(block)
            await writer.drain()

    sender = asyncio.create_task(send())
    got = 0
    while got < size:
        got += len(await reader.read(1 << 20))
    up = size / (time.monotonic() - started) / (1 << 20)
    await sender
    writer.close()

    reader, writer = await _socks(port, echo + 1)
    started = time.monotonic()
    writer.write(struct.pack("!Q", size))
    got = 0
    while chunk := await reader.read(1 << 20):
        got += len(chunk)
    down = size / (time.monotonic() - started) / (1 << 20)
    writer.close()
    assert got == size

    count = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        reader, writer = await _socks(port, echo)
        writer.write(b"ping1234")
        assert await reader.readexactly(8) == b"ping1234"
        writer.close()
        await writer.wait_closed()
        count += 1
    return up, down, count / (time.monotonic() - started)


def start_sing_box_client(directory: Path, server: RunningServer, cert: SelfSigned | None, flow: str) -> RunningServer:
    port = free_port()
    ob: dict[str, Any] = {
        "type": "vless",
        "tag": "proxy",
        "server": server.host,
        "server_port": server.port,
        "uuid": USER_ID,
        "flow": flow,
    }
    if cert is not None:
        ob["tls"] = {"enabled": True, "server_name": "vless.test", "certificate_path": str(cert.cert_file)}
    cfg = {
        "log": {"level": "warn"},
        "inbounds": [{"type": "mixed", "tag": "in", "listen": "127.0.0.1", "listen_port": port}],
        "outbounds": [ob],
    }
    path = directory / f"sing-box-client-{port}.json"
    path.write_text(json.dumps(cfg))
    from vless_servers import _spawn

    return _spawn([sing_box_path(), "run", "-c", str(path)], path, "127.0.0.1", port, ())


def _start_echo(port: int) -> subprocess.Popen[bytes]:
    echo = subprocess.Popen([sys.executable, "-m", "tunray.testing.echo", "--port", str(port)], stdout=subprocess.PIPE)
    assert echo.stdout is not None and b"ready" in echo.stdout.readline()
    return echo


async def _measure(
    ob: dict[str, Any], client_port: int, echo: int, size: int, seconds: float
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    ours = await bench_tunray(ob, echo, size, seconds)
    theirs = await bench_sing_box_client(client_port, echo, size, seconds)
    return ours, theirs


def main() -> None:
    """Processes start here, outside the event loop; each path's measurements run in their own loop."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    size = (args.mib << 20) // BLOCK * BLOCK
    directory = Path(tempfile.mkdtemp(prefix="bench-vless-"))
    cert = make_cert(directory)
    echo_port = 24000
    echo = _start_echo(echo_port)
    rows: list[tuple[str, tuple[float, float, float], tuple[float, float, float]]] = []
    try:
        for name, use_tls, flow in (("raw", False, ""), ("tls", True, ""), ("tls+vision", True, "xtls-rprx-vision")):
            server = start_sing_box(directory, tls=cert if use_tls else None, flow=flow)
            client = start_sing_box_client(directory, server, cert if use_tls else None, flow)
            try:
                ob = vless_outbound(server, tls=cert if use_tls else None, flow=flow)
                ours, theirs = asyncio.run(_measure(ob, client.port, echo_port, size, args.seconds))
            finally:
                client.stop()
                server.stop()
            rows.append((name, ours, theirs))
    finally:
        echo.kill()
        echo.wait()
        if echo.stdout is not None:
            echo.stdout.close()
    print(f"single stream {size >> 20} MiB, connections for {args.seconds:g} s; sing-box {sing_box_path().rsplit('/', 1)[-1]}")
    print(f"{'path':<12} {'client':<9} {'echo MiB/s':>10} {'down MiB/s':>11} {'conn/s':>8}")
    for name, ours, theirs in rows:
        print(f"{name:<12} {'tunray':<9} {ours[0]:>10.0f} {ours[1]:>11.0f} {ours[2]:>8.0f}")
        print(f"{'':<12} {'sing-box':<9} {theirs[0]:>10.0f} {theirs[1]:>11.0f} {theirs[2]:>8.0f}")
        ratio = [o / t if t else 0.0 for o, t in zip(ours, theirs, strict=True)]
        print(f"{'':<12} {'ratio':<9} {ratio[0]:>10.2f} {ratio[1]:>11.2f} {ratio[2]:>8.2f}")


if __name__ == "__main__":
    main()
