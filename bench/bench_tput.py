"""Throughput only: one proxy in a fresh bench world, iperf3 up / down / 4-stream up, with the proxy's CPU.

    sudo .venv/bin/python bench/bench_tput.py --proxy tunray-system --mtu 65535
    sudo .venv/bin/python bench/bench_tput.py --proxy sb-system --mtu 65535 --runs 3
    sudo .venv/bin/python bench/bench_tput.py --proxy tunray-system --perf /tmp/tp   # perf record per mode

Same topology and iperf3 runs as the throughput rows of bench/run.py.  Besides Mbit/s it
prints the proxy's CPU seconds per GB moved (summed over its processes), which depends far
less on what else the machine is running than Mbit/s does: compare that on a shared box.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from run import iperf, proc_cpu_s
from world import PROXIES, World, find_proxy

MODES = {"up": (False, 1), "down": (True, 1), "up4": (False, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(prog="bench/bench_tput.py")
    ap.add_argument("--proxy", choices=[p.key for p in PROXIES], default="tunray-system")
    ap.add_argument("--mtu", type=int, default=65535)
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--modes", default="up,down,up4", help="comma-separated: up, down, up4")
    ap.add_argument("--workers", type=int, default=1, help="tunray: the TUN's worker processes")
    ap.add_argument("--perf", help="perf record the proxy during each mode's first run to PREFIX.MODE")
    a = ap.parse_args()
    proxy = find_proxy(a.proxy, a.workers)
    modes = a.modes.split(",")
    results: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="tunray-tput-") as tmp:
        world = World(Path(tmp))
        try:
            pid = world.start(proxy, a.mtu)
            for i in range(a.runs):
                for mode in modes:
                    reverse, streams = MODES[mode]
                    perf = None
                    if a.perf and i == 0:
                        perf = subprocess.Popen(["perf", "record", "-F", "1999", "-g", "-o", f"{a.perf}.{mode}",
                                                 "-p", str(pid), "--", "sleep", str(a.seconds)],
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    cpu0, t0 = proc_cpu_s(pid), time.monotonic()
                    mbps = iperf(world, a.seconds, reverse=reverse, streams=streams)
                    cpu, wall = proc_cpu_s(pid) - cpu0, time.monotonic() - t0
                    if perf is not None:
                        perf.wait(30)
                    per_gb = cpu / (mbps * wall / 8 / 1000)
                    results[mode].append((mbps, per_gb))
                    print(f"run {i + 1} {mode:>4}: {mbps:8,.0f} Mbit/s, proxy CPU {cpu / wall:.2f} cores, "
                          f"{per_gb:.3f} CPU s per GB", flush=True)
        finally:
            world.close()
    for mode, rs in results.items():
        print(f"{proxy.key} MTU {a.mtu} {mode}: median {statistics.median(r[0] for r in rs):,.0f} Mbit/s, "
              f"{statistics.median(r[1] for r in rs):.3f} CPU s per GB")


if __name__ == "__main__":
    main()
