"""Single-flow throughput of the python stack through a real TUN (needs root).

    .venv/bin/python plugins/stack_python/bench_stack.py [--bytes N] [--v6]

For each MTU (1500, 65535) with and without vnet offloads it runs a kernel client in
a throwaway namespace: "upload" (kernel client -> stack sink) and "download" (stack
source -> kernel client), and prints Gbit/s as measured by the client.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).with_name("tests")))

from stackpy_tun import SINK, SOURCE, V4_PEER, V6_PEER, run_client, serve, tun_namespace
from tunray.stack import StackOptions
from tunray.testing.plugin import new_event_loop
from tunray_stack_python.stack import PythonStack


async def one(mtu: int, offload: bool, size: int, host: str) -> tuple[float, float, dict[str, int]]:
    with tun_namespace(mtu, offload) as (device, ns):
        stack = PythonStack(StackOptions(mtu=mtu))
        await stack.attach(device)
        server = asyncio.create_task(serve(stack))
        try:
            up = await run_client(ns, "upload", host, str(SINK), str(size), limit=600)
            assert up["sent"] == up["reply"], "upload corrupted"
            down = await run_client(ns, "download", host, str(SOURCE), str(size), limit=600)
            assert down["received"] == down["server"], "download corrupted"
        finally:
            await stack.aclose()
            await server
        return size * 8 / up["seconds"] / 1e9, size * 8 / down["seconds"] / 1e9, stack.stats()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bytes", type=int, default=200 << 20)
    parser.add_argument("--v6", action="store_true")
    args = parser.parse_args()
    host = V6_PEER if args.v6 else V4_PEER
    loop = new_event_loop()
    print(f"{'mtu':>6} {'offload':>8} {'upload Gbit/s':>14} {'download Gbit/s':>16}")
    try:
        for mtu in (1500, 65535):
            for offload in (False, True):
                up, down, stats = loop.run_until_complete(one(mtu, offload, args.bytes, host))
                print(f"{mtu:>6} {offload!s:>8} {up:>14.2f} {down:>16.2f}   "
                      f"rto={stats.get('tcp_rto', 0)} fast_rtx={stats.get('tcp_fast_retransmit', 0)}",
                      flush=True)
    finally:
        loop.close()


if __name__ == "__main__":
    main()
