"""Held flows only: one proxy in a fresh bench world holds N TCP flows, every one echoing.

    sudo .venv/bin/python bench/bench_held.py --proxy tunray-system --flows 5000
    sudo .venv/bin/python bench/bench_held.py --proxy tunray-system --flows 10000 --workers 2
    sudo .venv/bin/python bench/bench_held.py --proxy sb-system --flows 5000

Same load as the "held flows" rows of bench/run.py (``bench/load.py hold``: open N flows,
each echoing 32 bytes, then echo on every one again once all are open), plus the proxy's
open descriptors per held flow (summed over its processes), which is what
``RLIMIT_NOFILE`` divides.  Prints one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
from pathlib import Path

from run import _raise_nofile, hold_flows
from tunray.workers import process_tree
from world import PROXIES, World, find_proxy


def open_fds(pid: int) -> int:
    return sum(len(os.listdir(f"/proc/{p}/fd")) for p in process_tree(pid))


def main() -> None:
    ap = argparse.ArgumentParser(prog="bench/bench_held.py")
    ap.add_argument("--proxy", choices=[p.key for p in PROXIES], default="tunray-system")
    ap.add_argument("--flows", type=int, default=5000)
    ap.add_argument("--mtu", type=int, default=1500)
    ap.add_argument("--workers", type=int, default=1, help="tunray: the TUN's worker processes")
    a = ap.parse_args()
    _raise_nofile()
    proxy = find_proxy(a.proxy, a.workers)
    with tempfile.TemporaryDirectory(prefix="tunray-held-") as tmp:
        world = World(Path(tmp))
        try:
            pid = world.start(proxy, a.mtu)
            idle = open_fds(pid)
            out: dict[str, object] = {"proxy": proxy.key, "flows": a.flows,
                                      "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)}
            fds: list[int] = []
            try:
                out.update(hold_flows(world, pid, a.flows, during=lambda: fds.append(open_fds(pid))))
                out.update(fds_held=fds[0], fds_per_flow=round((fds[0] - idle) / a.flows, 2))
            except RuntimeError as exc:
                out["error"] = str(exc)
        finally:
            world.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
