"""Memory of one proxy in a fresh bench world: idle, right after a burst of traffic, and settled.

    sudo .venv/bin/python bench/bench_mem.py --proxy tunray --workers 2
    sudo .venv/bin/python bench/bench_mem.py --proxy sb-gvisor
    sudo .venv/bin/python bench/bench_mem.py --proxy tunray --workers 2 --no-traffic   # idle only, ~5 s

Same topology and proxy configs as bench/run.py.  For every process of the proxy (tunray's
supervisor and its workers) it prints PSS, RSS and the private dirty pages from
``/proc/PID/smaps_rollup``, and the sum of PSS: a page shared by N processes counts 1/N in
each, so the sum counts it once (summed RSS counts it N times).  PSS also divides pages
shared with unrelated processes (other Pythons or sing-boxes on the machine), so the line
also gives the pages resident in the group counted once each (``/proc/PID/pagemap``), which
for a single process is its RSS.  Readings:

* ``idle``: one second after the first flow got through (the probe), nothing else yet;
* ``burst``: right after iperf3 up, down and 4 streams (2 s each) and a 3 s connection-rate run;
* ``settled``: ``--settle`` seconds later, idle again (tunray trims its heap every 10 s).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from run import QUICK, connrate, iperf, proc_rss_mib
from tunray.workers import process_tree, unique_resident_kib
from world import PROXIES, World

FIELDS = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Private_Dirty")


def rollup(pid: int) -> dict[str, int]:
    """The KiB fields of ``/proc/PID/smaps_rollup`` that :data:`FIELDS` names."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in FIELDS:
                out[key] = int(rest.split()[0])
    return out


def show(label: str, pid: int) -> float:
    """Print one reading; return total PSS in MiB."""
    rows = []
    for p in process_tree(pid):
        try:
            rows.append((p, rollup(p)))
        except OSError:
            continue
    total = sum(r["Pss"] for _, r in rows) / 1024
    print(f"{label}: PSS {total:.1f} MiB over {len(rows)} process(es), resident (each page once) "
          f"{unique_resident_kib(pid) / 1024:.1f} MiB, summed RSS {proc_rss_mib(pid):.1f} MiB")
    for p, r in rows:
        print(f"  pid {p:<7} " + "  ".join(f"{k} {r.get(k, 0) / 1024:5.1f}" for k in FIELDS))
    return total


def main() -> None:
    ap = argparse.ArgumentParser(prog="bench/bench_mem.py")
    ap.add_argument("--proxy", choices=[p.key for p in PROXIES], default="tunray")
    ap.add_argument("--workers", type=int, default=1, help="tunray: the TUN's worker processes")
    ap.add_argument("--mtu", type=int, default=1500)
    ap.add_argument("--settle", type=float, default=12.0, help="seconds idle before the last reading")
    ap.add_argument("--no-traffic", action="store_true", help="the idle reading only")
    a = ap.parse_args()
    proxy = next(p for p in PROXIES if p.key == a.proxy)
    if proxy.tunray:
        proxy = proxy.with_workers(a.workers)
    with tempfile.TemporaryDirectory(prefix="tunray-mem-") as tmp:
        world = World(Path(tmp))
        try:
            pid = world.start(proxy, a.mtu)
            time.sleep(1.0)
            show(f"{proxy.label} idle", pid)
            if a.no_traffic:
                return
            for kw in ({}, {"reverse": True}, {"streams": 4}):
                iperf(world, 2, **kw)  # type: ignore[arg-type]
            connrate(world, QUICK)
            show("burst", pid)
            time.sleep(a.settle)
            show(f"settled ({a.settle:g} s later)", pid)
        finally:
            world.close()


if __name__ == "__main__":
    sys.exit(main())
