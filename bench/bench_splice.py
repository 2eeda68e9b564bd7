"""Relay throughput between two kernel sockets: splice(2) versus copying through Python.

    .venv/bin/python bench/bench_splice.py [--size-mib 2048] [--runs 3] [--streams 1]

Two loopback TCP connections joined by :func:`tunray.relay.relay` (what ``freedom``
does behind a socket-backed app link); a sender pushes ``--size-mib`` through the
app's end and a receiver drains the server's end, in one event loop (uvloop when
installed).  ``copy`` wraps one end so it offers no descriptor, forcing the copy loop;
``splice`` lets the relay splice.  Prints MiB/s per run, the median, and the relay
process's CPU seconds per GiB (lower is better).  No root needed.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import time

from tunray import splice
from tunray.bytestream import ByteStream
from tunray.policy import LevelPolicy
from tunray.relay import relay
from tunray.testing.bytestream import Delegating, tcp_stream_pair

BLOCK = b"\x5a" * (1 << 20)
POLICY = LevelPolicy(handshake=4, conn_idle=60, uplink_only=5, downlink_only=5, buffer_size=1 << 20)


class NoSplice(Delegating):
    """Delegates everything but ``fileno``: the relay must copy."""


async def one_flow(size: int, mode: str) -> None:
    async with tcp_stream_pair(1 << 20) as (app, app_side), tcp_stream_pair(1 << 20) as (up_side, server):
        proxy_app: ByteStream = NoSplice(app_side) if mode == "copy" else app_side
        task = asyncio.ensure_future(relay(proxy_app, up_side, POLICY))

        async def send() -> None:
            for _ in range(size >> 20):
                await app.write(BLOCK)
            await app.write_eof()

        async def drain() -> int:
            n = 0
            while chunk := await server.read(1 << 20):
                n += len(chunk)
            await server.write_eof()
            return n

        _, got = await asyncio.gather(send(), drain())
        await task
        assert got == size, f"{got} of {size} bytes arrived"


async def run(size: int, mode: str, streams: int) -> tuple[float, float]:
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    await asyncio.gather(*(one_flow(size, mode) for _ in range(streams)))
    elapsed = time.perf_counter() - t0
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    gib = size * streams / (1 << 30)
    return size * streams / elapsed / (1 << 20), cpu / gib


def main() -> None:
    ap = argparse.ArgumentParser(prog="bench/bench_splice.py")
    ap.add_argument("--size-mib", type=int, default=2048, help="bytes per flow (MiB)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--streams", type=int, default=1, help="flows in parallel")
    args = ap.parse_args()
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = asyncio.new_event_loop
    size = args.size_mib << 20
    for mode in ("copy", "splice"):
        rates, cpus = [], []
        flows0 = splice.stats.flows
        for i in range(args.runs):
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                rate, cpu = runner.run(run(size, mode, args.streams))
            rates.append(rate)
            cpus.append(cpu)
            print(f"{mode:6} run {i + 1}: {rate:8.0f} MiB/s  {cpu:6.2f} CPU s/GiB", flush=True)
        spliced = splice.stats.flows - flows0
        print(
            f"{mode:6} median: {statistics.median(rates):8.0f} MiB/s  {statistics.median(cpus):6.2f} CPU s/GiB"
            f"  ({spliced} of {args.runs * args.streams} flows spliced)"
        )


if __name__ == "__main__":
    main()
