"""Bulk throughput of the python stack through a real TUN with an impaired link (needs root).

    .venv/bin/python plugins/stack_python/bench_loss.py [--bytes N] [--seeds 1,2,3] [--mtu 1500,65535]

Wraps the TUN in the conformance suite's :class:`~tunray.testing.impair.ImpairedDevice`
(2% loss, 1% duplication, 2% reordering, both directions), moves *N* bytes each way
with the suite's bulk clients and prints Mbit/s plus the stack's loss-recovery counters.
"""

from __future__ import annotations

import argparse
import asyncio

from tunray.device import PacketDevice
from tunray.testing.impair import ImpairedDevice
from tunray.testing.plugin import new_event_loop
from tunray.testing.stackcheck import SINK, SOURCE, V4_PEER, stack_harness
from tunray_stack_python.stack import PythonStack

COUNTERS = ("tcp_rto", "tcp_fast_retransmit", "tcp_sack_retransmit", "tcp_partial_ack_retransmit", "tcp_tail_loss_probe")


async def run(mtu: int, size: int, seed: int) -> tuple[float, float, dict[str, int]]:
    def wrap(device: PacketDevice) -> PacketDevice:
        return ImpairedDevice(device, seed=seed)

    async with stack_harness(PythonStack, mtu=mtu, wrap=wrap) as h:
        limit = 60 + size / (1 << 20)
        up = await h.client("upload", V4_PEER, SINK, size, limit=limit)
        assert up["sent"] == up["reply"]
        before = dict(h.stack.counters)
        down = await h.client("download", V4_PEER, SOURCE, size, limit=limit)
        assert down["bytes"] == size and down["received"] == down["server"]
        delta = {k: h.stack.counters.get(k, 0) - before.get(k, 0) for k in COUNTERS}
    return size * 8 / up["seconds"] / 1e6, size * 8 / down["seconds"] / 1e6, delta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bytes", type=int, default=4 << 20)
    parser.add_argument("--seeds", default="7,8,9")
    parser.add_argument("--mtu", default="1500,65535")
    args = parser.parse_args()
    loop = new_event_loop()
    print(f"{'mtu':>6} {'seed':>5} {'up Mbit/s':>10} {'down Mbit/s':>12}  download counters")
    try:
        for mtu in map(int, args.mtu.split(",")):
            for seed in map(int, args.seeds.split(",")):
                up, down, delta = loop.run_until_complete(run(mtu, args.bytes, seed))
                print(f"{mtu:>6} {seed:>5} {up:>10.1f} {down:>12.1f}  {delta}", flush=True)
    finally:
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


if __name__ == "__main__":
    main()
