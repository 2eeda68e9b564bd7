"""Connection rate only: tunray (or a sing-box stack) in a fresh bench world, ``connrate`` N times.

    sudo .venv/bin/python bench/bench_cps.py [--proxy tunray] [--runs 3] [--seconds 3]
    sudo .venv/bin/python bench/bench_cps.py --profile /tmp/cps.svg   # py-spy during run 1
    sudo .venv/bin/python bench/bench_cps.py --proxy tunray-system --workers 2   # CPU summed over workers

Same topology and load as the "TCP connections per second" row of bench/run.py (MTU 1500,
64 loops in parallel); prints each run's conn/s and the median.  Meant for tuning the
per-connection path without the rest of the matrix.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from run import proc_cpu_split
from world import ECHO_PORT, HOST4, PROXIES, World, find_proxy

LOAD = str(Path(__file__).with_name("load.py"))
PY_SPY = Path(sys.executable).with_name("py-spy")


def main() -> None:
    ap = argparse.ArgumentParser(prog="bench/bench_cps.py")
    ap.add_argument("--proxy", choices=[p.key for p in PROXIES], default="tunray")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--parallel", type=int, default=64)
    ap.add_argument("--profile", help="write a py-spy flame graph of the proxy during run 1 here")
    ap.add_argument("--workers", type=int, default=1, help="tunray: the TUN's worker processes")
    ap.add_argument("--mtu", type=int, default=1500, help="the TUN's MTU (the issue's target is at 65535)")
    a = ap.parse_args()
    proxy = find_proxy(a.proxy, a.workers)
    results: list[float] = []
    with tempfile.TemporaryDirectory(prefix="tunray-cps-") as tmp:
        world = World(Path(tmp))
        try:
            pid = world.start(proxy, a.mtu)
            for i in range(a.runs):
                spy = None
                if a.profile and i == 0:
                    spy = subprocess.Popen([str(PY_SPY), "record", "-o", a.profile, "--pid", str(pid),
                                            "-d", str(int(a.seconds) + 1), "-r", "400", "-f", "raw",
                                            *(["--native"] if os.environ.get("PYSPY_NATIVE") else ["--nonblocking"])],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                argv = [sys.executable, LOAD, "connrate", HOST4, str(ECHO_PORT),
                        "--seconds", str(a.seconds), "--parallel", str(a.parallel)]
                cpu0 = proc_cpu_split(pid)
                res = world.run_client(argv, timeout=a.seconds + 60)
                cpu1 = proc_cpu_split(pid)
                if res.returncode != 0:
                    raise SystemExit(f"connrate failed: {res.stderr.strip()[-300:]}")
                line = res.stdout.strip().splitlines()[-1]
                out = json.loads(line)
                results.append(float(out["cps"]))
                n = max(1, int(out["done"]))
                print(f"run {i + 1}: {out['cps']:,.0f} conn/s ({out['errors']} errors); proxy CPU per conn "
                      f"user {(cpu1[0] - cpu0[0]) / n * 1e6:.0f} µs, sys {(cpu1[1] - cpu0[1]) / n * 1e6:.0f} µs",
                      flush=True)
                if spy is not None:
                    spy.wait(60)
        finally:
            world.close()
    print(f"{proxy.key}: median {statistics.median(results):,.0f} conn/s over {len(results)} runs "
          f"({', '.join(f'{r:,.0f}' for r in results)})")


if __name__ == "__main__":
    main()
