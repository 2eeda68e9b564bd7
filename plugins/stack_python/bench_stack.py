"""Single-flow throughput of the python stack through a real TUN (needs root).

    .venv/bin/python plugins/stack_python/bench_stack.py [--bytes N] [--v6]

For each MTU (1500, 65535) with and without vnet offloads it runs the conformance
suite's bulk check (``tunray.testing.stackcheck.check_bulk``) in a throwaway
namespace: "upload" (kernel client -> stack sink) and "download" (stack source ->
kernel client), SHA-256 checked, and prints Gbit/s as measured by the client.
"""

from __future__ import annotations

import argparse

from tunray.testing.plugin import new_event_loop
from tunray.testing.stackcheck import check_bulk
from tunray_stack_python.stack import PythonStack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bytes", type=int, default=200 << 20)
    parser.add_argument("--v6", action="store_true")
    args = parser.parse_args()
    loop = new_event_loop()
    print(f"{'mtu':>6} {'offload':>8} {'upload Gbit/s':>14} {'download Gbit/s':>16}")
    try:
        for mtu in (1500, 65535):
            for offload in (False, True):
                t = loop.run_until_complete(
                    check_bulk(PythonStack, family=6 if args.v6 else 4, mtu=mtu, offload=offload, size=args.bytes)
                )
                print(f"{mtu:>6} {offload!s:>8} {t.upload:>14.2f} {t.download:>16.2f}", flush=True)
    finally:
        loop.close()


if __name__ == "__main__":
    main()
