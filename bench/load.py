"""Load generators, run inside the client namespace by bench/run.py; each prints one JSON line.

    python bench/load.py connrate HOST PORT --seconds S --parallel N
        connect, send 32 bytes, read them back, close; N loops in parallel for S seconds.
    python bench/load.py udprtt HOST PORT --count N
        one datagram at a time to a UDP echo server; round-trip p50/p99 in microseconds.
    python bench/load.py hold HOST PORT --flows N
        open N TCP connections (each echoes 32 bytes, so it is proxied end to end), then echo
        on every one again once all are open; print {"held": N, "echoing": N, ...}, keep them
        open until stdin closes.

The same client drives every proxy, so a slow client lowers every result alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import sys
import time
from typing import Any

PAYLOAD = b"tunray-bench-32-bytes-payload!!!"
assert len(PAYLOAD) == 32


def _raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _one_exchange(host: str, port: int) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(PAYLOAD)
        got = await reader.readexactly(len(PAYLOAD))
        if got != PAYLOAD:
            raise RuntimeError("echo mismatch")
    finally:
        writer.close()
        await writer.wait_closed()


async def connrate(host: str, port: int, seconds: float, parallel: int) -> dict[str, float]:
    done = 0
    errors = 0
    end = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done, errors
        while time.monotonic() < end:
            try:
                await asyncio.wait_for(_one_exchange(host, port), 5.0)
                done += 1
            except (OSError, TimeoutError, asyncio.IncompleteReadError, RuntimeError):
                errors += 1
                await asyncio.sleep(0.01)

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(parallel)))
    elapsed = time.monotonic() - t0
    return {"cps": done / elapsed, "done": done, "errors": errors, "seconds": elapsed}


def udprtt(host: str, port: int, count: int) -> dict[str, float]:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    rtts: list[float] = []
    lost = 0
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        for i in range(count + 20):
            msg = i.to_bytes(4, "big") + os.urandom(28)
            t0 = time.perf_counter()
            s.sendto(msg, (host, port))  # unconnected: the reply's source may differ
            try:
                while s.recvfrom(2048)[0] != msg:
                    pass
            except TimeoutError:
                lost += 1
                continue
            if i >= 20:  # the first datagrams include the flow set-up
                rtts.append(time.perf_counter() - t0)
    if not rtts:
        raise SystemExit("no UDP replies")
    rtts.sort()

    def pick(q: float) -> float:
        return rtts[min(len(rtts) - 1, int(q * len(rtts)))] * 1e6

    return {"p50_us": pick(0.50), "p99_us": pick(0.99), "lost": lost, "count": len(rtts)}


async def hold(host: str, port: int, flows: int, batch: int = 100) -> None:
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    failed = 0
    sem = asyncio.Semaphore(batch)
    t0 = time.monotonic()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            writer.write(PAYLOAD)  # uvloop raises RuntimeError on a transport the peer closed
            return await asyncio.wait_for(reader.readexactly(len(PAYLOAD)), 10.0) == PAYLOAD
        except (OSError, RuntimeError, TimeoutError, asyncio.IncompleteReadError):
            return False

    async def open_one() -> None:
        nonlocal failed
        async with sem:
            for _attempt in range(3):
                try:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10.0)
                except (OSError, TimeoutError):
                    await asyncio.sleep(0.1)
                    continue
                if not await echo(reader, writer):
                    writer.close()
                    await asyncio.sleep(0.1)
                    continue
                conns.append((reader, writer))
                return
            failed += 1

    async def still(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        async with sem:
            return await echo(reader, writer)

    await asyncio.gather(*(open_one() for _ in range(flows)))
    opened = time.monotonic() - t0
    # every flow once more, now that all are open at the same time: "held" means still proxied
    echoing = sum(await asyncio.gather(*(still(r, w) for r, w in conns)))
    print(json.dumps({"held": len(conns), "echoing": echoing, "failed": failed, "open_seconds": opened}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the harness closes our stdin
    for _r, w in conns:
        w.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["connrate", "udprtt", "hold"])
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--parallel", type=int, default=64)
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--flows", type=int, default=5000)
    a = p.parse_args()
    _raise_nofile()
    runner: Any = asyncio.run
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a tunray dependency
        pass
    if a.mode == "connrate":
        print(json.dumps(runner(connrate(a.host, a.port, a.seconds, a.parallel))), flush=True)
    elif a.mode == "udprtt":
        print(json.dumps(udprtt(a.host, a.port, a.count)), flush=True)
    else:
        runner(hold(a.host, a.port, a.flows))


if __name__ == "__main__":
    main()
