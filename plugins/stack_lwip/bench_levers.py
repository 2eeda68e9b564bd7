"""The lwip stack's speed levers, one at a time, through a real TUN (needs root).

    .venv/bin/python plugins/stack_lwip/bench_levers.py [--bytes N] [--v6] [--rounds R]

Each row is the conformance suite's bulk check (``stackcheck.check_bulk``: kernel
client -> stack sink, stack source -> kernel client, SHA-256 checked) in a throwaway
namespace, with one lever changed against the row above it:

* ``offload``: the TUN's vnet header, so the kernel hands lwIP GRO/TSO super-segments
  (upload) and takes checksum-offloaded packets;
* ``gso``: lwIP's consecutive segments of a flow leave as one GSO super-packet (download);
* ``mssRewrite``: the SYN-ACK advertises MTU-40 instead of lwIP's 1460 (matters at MTU 65535
  without offload: the kernel then sends large segments itself).

Prints Gbit/s as measured by the client (median of ``--rounds``).
"""

from __future__ import annotations

import argparse
import statistics

from tunray.testing.plugin import new_event_loop
from tunray.testing.stackcheck import check_bulk
from tunray_stack_lwip.stack import LwipStack

ROWS = (  # (mtu, offload, gso, mssRewrite)
    (1500, False, False, False),
    (1500, True, False, False),
    (1500, True, True, False),
    (65535, False, False, False),
    (65535, False, False, True),
    (65535, True, True, True),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bytes", type=int, default=64 << 20)
    parser.add_argument("--v6", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    loop = new_event_loop()
    print(f"{'mtu':>6} {'offload':>8} {'gso':>6} {'mssRewrite':>11} {'upload Gbit/s':>14} {'download Gbit/s':>16}")
    try:
        for mtu, offload, gso, mss in ROWS:
            ups, downs = [], []
            for _ in range(args.rounds):
                t = loop.run_until_complete(check_bulk(
                    LwipStack, family=6 if args.v6 else 4, mtu=mtu, offload=offload, size=args.bytes,
                    settings={"gso": gso, "mssRewrite": mss}))
                ups.append(t.upload)
                downs.append(t.download)
            print(f"{mtu:>6} {offload!s:>8} {gso!s:>6} {mss!s:>11} {statistics.median(ups):>14.2f} "
                  f"{statistics.median(downs):>16.2f}", flush=True)
    finally:
        loop.close()


if __name__ == "__main__":
    main()
