"""tunray's TUN path (python and lwip stacks) against sing-box (gvisor and system stacks) on the same namespaces.

    sudo .venv/bin/python bench/run.py            # full matrix (~10 minutes), writes docs/benchmarks.md
    sudo .venv/bin/python bench/run.py --quick    # reduced matrix (a few minutes)
    sudo .venv/bin/python bench/run.py --workers 1,2   # every tunray stack with 1 and with 2 worker processes

Every proxy run gets a fresh :class:`world.World` (client/server namespaces, iperf3 and
echo servers on 203.0.113.10 in the server namespace, the proxy's TUN capturing
203.0.113.0/24 in the client namespace) and is torn down before the next.  Runs
alternate between the proxies round by round (the order rotates); each figure is the
median over rounds.  Metrics:

* iperf3 (``-J``): single-stream upload, download and 4-stream aggregate, TUN MTU 1500 and 65535;
* TCP connections per second (connect, echo 32 bytes, close; 64 loops in parallel), also with
  HTTP/TLS sniffing on (the 32 bytes are neither, as with SSH or a database), the latter in
  a fresh world so that neither run inherits the other's client ports in TIME_WAIT;
* UDP echo round trip p50 / p99;
* memory: RSS and PSS (``/proc/PID/smaps_rollup``) idle right after start (one probe flow, no other
  traffic), PSS idle again :data:`SETTLE` seconds after the iperf3, connection and UDP runs, and
  RSS, PSS and CPU seconds holding 5,000 TCP flows; each summed over the proxy's processes
  (tunray's supervisor and workers).  PSS splits a page shared by N processes N ways, so the sum
  counts it once; summed RSS would count it N times.  PSS also shrinks when *unrelated*
  processes map the same pages (other Pythons, another sing-box on a shared machine), so
  "resident, each page once" counts every physical page the proxy's processes keep
  resident exactly once (``/proc/PID/pagemap``): for one process that is its RSS.

The tunray stacks (python, system, mixed) run with the TUN's ``workers`` set to 1 unless ``--workers``
lists counts: then every tunray stack runs once per count, each a column of its own.

The table goes to stdout and between the markers of docs/benchmarks.md; the chart to
docs/benchmarks.png (drawn by :mod:`png`, no matplotlib needed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import png
from tunray.workers import process_tree, total_pss_kib, unique_resident_kib
from world import ECHO_PORT, HOST4, IPERF_PORT, PROXIES, REPO, SING_BOX, Proxy, World

LOAD = str(Path(__file__).with_name("load.py"))
DOC = REPO / "docs" / "benchmarks.md"
CHART = REPO / "docs" / "benchmarks.png"
NOTES: set[str] = set()
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
IDLE_WAIT = 1.0  # seconds between the first flow through and the idle reading
SETTLE = 12.0  # seconds idle before the after-traffic reading (tunray trims its heap every 10 s)


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    target: str = ""  # e.g. ">= 0.5" against sing-box gvisor


@dataclass(frozen=True)
class Plan:
    rounds: int
    mtus: tuple[int, ...]
    iperf_seconds: int
    conn_seconds: float
    udp_count: int
    flows: int


FULL = Plan(rounds=2, mtus=(1500, 65535), iperf_seconds=5, conn_seconds=5.0, udp_count=2000, flows=5000)
QUICK = Plan(rounds=1, mtus=(1500, 65535), iperf_seconds=2, conn_seconds=3.0, udp_count=500, flows=5000)


def metrics(plan: Plan) -> list[Metric]:
    out: list[Metric] = []
    for mtu in plan.mtus:
        tgt = ">= 0.5" if mtu == 65535 else ""
        out += [
            Metric(f"up1@{mtu}", f"iperf3 upload 1 stream, MTU {mtu}", "Mbit/s", True, tgt),
            Metric(f"down1@{mtu}", f"iperf3 download 1 stream, MTU {mtu}", "Mbit/s", True, tgt),
            Metric(f"up4@{mtu}", f"iperf3 upload 4 streams, MTU {mtu}", "Mbit/s", True),
        ]
    out += [
        Metric("cps", "TCP connections per second", "conn/s", True, ">= 0.5"),
        Metric("cps_sniff", "TCP connections per second, sniffing http+tls on", "conn/s", True, ">= 0.5"),
        Metric("udp_p50", "UDP echo RTT p50", "µs", False),
        Metric("udp_p99", "UDP echo RTT p99", "µs", False),
        Metric("rss_idle", "RSS idle (right after start), summed over processes", "MiB", False),
        Metric("pss_idle", "PSS idle (right after start), all processes", "MiB", False, "<= 1.5"),
        Metric("res_idle", "resident idle, each physical page once (pagemap), all processes", "MiB", False, "<= 1.5"),
        Metric("pss_after", f"PSS idle again {SETTLE:g} s after the traffic above, all processes", "MiB", False),
        Metric("pss_flows", f"PSS at {plan.flows:,} TCP flows, all processes", "MiB", False),
        Metric("rss_flows", f"RSS at {plan.flows:,} TCP flows", "MiB", False, "<= 2.0"),
        Metric("cpu_flows", f"CPU s to open {plan.flows:,} flows", "s", False),
    ]
    return out


# --- measurements -------------------------------------------------------------------------------


def iperf(world: World, seconds: int, *, reverse: bool = False, streams: int = 1) -> float:
    argv = ["iperf3", "-c", HOST4, "-p", str(IPERF_PORT), "-t", str(seconds), "-J", "--connect-timeout", "5000"]
    if seconds >= 4:
        argv += ["-O", "1"]
    if reverse:
        argv.append("-R")
    if streams > 1:
        argv += ["-P", str(streams)]
    res = world.run_client(argv, timeout=seconds + 30)
    data = json.loads(res.stdout or "{}")
    if "error" in data or res.returncode != 0:
        raise RuntimeError(f"iperf3 failed: {data.get('error') or res.stderr.strip()}")
    return float(data["end"]["sum_received"]["bits_per_second"]) / 1e6


def load(world: World, *args: str, timeout: float) -> dict[str, float]:
    res = world.run_client([sys.executable, LOAD, *args], timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"load {args[0]} failed: {res.stderr.strip()[-300:]}")
    out: dict[str, float] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def proc_rss_mib(pid: int) -> float:
    """RSS summed over *pid* and its children (shared pages count once per process: see PSS)."""
    total = 0
    for p in process_tree(pid):
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def proc_pss_mib(pid: int) -> float:
    return total_pss_kib(pid) / 1024


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of *pid* and its live children (tunray's workers) so far."""
    user = sys_ = 0
    for p in process_tree(pid):
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        user += int(fields[11])
        sys_ += int(fields[12])
    tck = os.sysconf("SC_CLK_TCK")
    return user / tck, sys_ / tck


def proc_cpu_s(pid: int) -> float:
    """utime + stime of *pid* and its live children."""
    return sum(proc_cpu_split(pid))


def hold_flows(world: World, pid: int, flows: int, during: Callable[[], object] | None = None) -> dict[str, float]:
    """Hold *flows* through the proxy (bench/load.py hold); *during* is called while they are held."""
    cpu0 = proc_cpu_s(pid)
    argv = ["ip", "netns", "exec", world.client, sys.executable, LOAD, "hold", HOST4, str(ECHO_PORT), "--flows", str(flows)]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        if not select.select([proc.stdout], [], [], 90)[0]:
            raise RuntimeError("holding flows timed out")
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"hold failed: {proc.stderr.read().decode(errors='replace')[-300:] if proc.stderr else ''}")
        info = json.loads(line)
        time.sleep(1.0)  # let the proxy settle (buffers allocated, timers armed)
        rss = proc_rss_mib(pid)
        pss = proc_pss_mib(pid)
        cpu = proc_cpu_s(pid) - cpu0
        if during is not None:
            during()
        if info["held"] < flows * 0.99:
            raise RuntimeError(f"only {info['held']}/{flows} flows opened")
        if info["echoing"] < flows * 0.99:
            raise RuntimeError(f"only {info['echoing']}/{flows} held flows still echoed once all were open")
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    return {"rss_flows": rss, "pss_flows": pss, "cpu_flows": cpu, "held": info["held"]}


def connrate(world: World, plan: Plan) -> float:
    c = load(world, "connrate", HOST4, str(ECHO_PORT), "--seconds", str(plan.conn_seconds), "--parallel", "64",
             timeout=plan.conn_seconds + 60)
    return c["cps"]


def run_proxy(proxy: Proxy, mtu: int, plan: Plan, workdir: Path, say: Callable[[str], None]) -> dict[str, float]:
    """One proxy at one MTU in a fresh world; returns metric key -> value."""
    res: dict[str, float] = {}
    world = World(workdir)
    try:
        pid = world.start(proxy, mtu)
        if mtu == 1500:
            # Idle means idle: read before any traffic but the one probe flow start() sends (after
            # iperf3 and thousands of connections a heap holds buffers it has not given back yet:
            # that is the separate "after" reading below).
            time.sleep(IDLE_WAIT)
            res["rss_idle"], res["pss_idle"] = proc_rss_mib(pid), proc_pss_mib(pid)
            res["res_idle"] = unique_resident_kib(pid) / 1024
        t = plan.iperf_seconds
        res[f"up1@{mtu}"] = iperf(world, t)
        res[f"down1@{mtu}"] = iperf(world, t, reverse=True)
        res[f"up4@{mtu}"] = iperf(world, t, streams=4)
        if mtu == 1500:
            res["cps"] = connrate(world, plan)
            u = load(world, "udprtt", HOST4, str(ECHO_PORT), "--count", str(plan.udp_count), timeout=120)
            res["udp_p50"], res["udp_p99"] = u["p50_us"], u["p99_us"]
            time.sleep(SETTLE)
            res["pss_after"] = proc_pss_mib(pid)
            limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            if proxy.fds_per_flow * plan.flows + 500 > limit:
                NOTES.add(f"{proxy.label} holds {proxy.fds_per_flow} descriptors per TCP flow; "
                          f"{plan.flows:,} flows need more than this machine's RLIMIT_NOFILE hard limit "
                          f"({limit:,}), so its flow figures are missing.")
            else:
                try:
                    res.update({k: v for k, v in hold_flows(world, pid, plan.flows).items() if k != "held"})
                except RuntimeError as exc:
                    NOTES.add(f"{proxy.label}: holding {plan.flows:,} flows failed ({exc}).")
            # A fresh world (client namespace) for the sniffing run: the ~30,000 connections above
            # leave the client's ports in TIME_WAIT for 60 s, and the kernel recycles them
            # (tcp_tw_reuse) only towards peers that sent TCP timestamps.  Debian's lwIP sends
            # none, so in the same namespace the lwip run would measure the client's port
            # search (~400 conn/s), not the proxy.
            world.close()
            world = World(workdir)
            world.start(proxy, mtu, sniff=True)
            res["cps_sniff"] = connrate(world, plan)
        say(f"  {proxy.label:<22} MTU {mtu:<5} " + "  ".join(f"{k}={v:,.0f}" if v >= 100 else f"{k}={v:.2f}"
                                                        for k, v in res.items()))
    finally:
        world.close()
    return res


# --- report -------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fmt(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}" if abs(v) >= 1 else f"{v:.3f}"


def verdict(m: Metric, r: float | None) -> str:
    if not m.target or r is None:
        return ""
    op, bound = m.target.split()
    ok = r >= float(bound) if op == ">=" else r <= float(bound)
    return f"{m.target} {'✅' if ok else '❌'}"


OURS = [p for p in PROXIES if p.tunray]
GVISOR, SYSTEM = "sb-gvisor", "sb-system"


def _short(p: Proxy) -> str:
    return p.label.replace("tunray (", "").replace(" stack)", "")


def table(ms: list[Metric], med: dict[str, dict[str, float]]) -> str:
    """One value column per proxy; ratios of each tunray stack to sing-box gvisor and system."""
    cols = [p.label for p in PROXIES]
    ratios = [f"{_short(p)} / {k}" for p in OURS for k in ("gvisor", "system")]
    head = ("| metric | unit | " + " | ".join(cols + ratios) + " | target (vs gvisor) |\n"
            "|---|---|" + "---:|" * (len(cols) + len(ratios)) + "---|\n")
    rows = []
    for m in ms:
        vals = {p.key: med.get(p.key, {}).get(m.key) for p in PROXIES}
        g, s = vals[GVISOR], vals[SYSTEM]
        rs = [r for p in OURS for r in (ratio(vals[p.key], g), ratio(vals[p.key], s))]
        target = "; ".join(f"{_short(p)} {verdict(m, ratio(vals[p.key], g))}" for p in OURS) if m.target else ""
        rows.append(f"| {m.label} | {m.unit} | " + " | ".join(fmt(vals[p.key]) for p in PROXIES) + " | "
                    + " | ".join(fmt(r) for r in rs) + f" | {target} |")
    return head + "\n".join(rows) + "\n"


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 // 1024
    sb = subprocess.run([str(SING_BOX), "version"], capture_output=True, text=True).stdout.splitlines()
    ip3 = subprocess.run(["iperf3", "--version"], capture_output=True, text=True).stdout.splitlines()
    return (f"{cpu}, {os.cpu_count()} CPUs, {mem} GiB RAM; Linux {platform.release()}; "
            f"Python {platform.python_version()}; {sb[0] if sb else 'sing-box ?'}; {ip3[0] if ip3 else 'iperf3 ?'}")


def write_doc(body: str) -> None:
    text = DOC.read_text() if DOC.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    pre, rest = text.split(BEGIN, 1)
    post = rest.split(END, 1)[1]
    DOC.write_text(f"{pre}{BEGIN}\n{body}{END}{post}")


def chart(ms: list[Metric], med: dict[str, dict[str, float]], title: str) -> bytes:
    rows = []
    for m in ms:
        vals = {p.key: med.get(p.key, {}).get(m.key) for p in PROXIES}
        label = m.key.replace("@", " MTU ").replace("_", " ").upper()
        rows.append((label, [ratio(vals[p.key], vals[GVISOR]) for p in OURS]))
    colours = [(52, 101, 164), (230, 140, 30), (78, 154, 6)]
    return png.ratio_chart(title, rows, [(f"TUNRAY {_short(p).upper()} / SING-BOX GVISOR", colours[i % 3])
                                         for i, p in enumerate(OURS)], marks=(0.5, 1.0, 2.0))


# --- main -------------------------------------------------------------------------------------


def _raise_nofile(want: int = 1 << 17) -> None:
    """Inherited by servers, proxies and clients: sing-box's system stack holds 6 fds per flow."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, hard), max(want, hard)))
    except (ValueError, OSError):  # not allowed to raise the hard limit: use what there is
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _expand_workers(counts: list[int]) -> None:
    """Replace each tunray proxy by one per worker count (columns "… , N workers")."""
    global PROXIES, OURS
    PROXIES = tuple(q for p in PROXIES for q in ([p.with_workers(n) for n in counts] if p.tunray else [p]))
    OURS = [p for p in PROXIES if p.tunray]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="reduced matrix, a few minutes")
    ap.add_argument("--rounds", type=int, help="rounds (default 2, quick 1)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    ap.add_argument("--only", choices=[p.key for p in PROXIES], action="append", help="run only these proxies")
    ap.add_argument("--workers", default="", metavar="N[,M...]",
                    help="run every tunray stack once per worker count (TUN \"workers\"); default: 1 worker")
    a = ap.parse_args(argv)
    if a.workers:
        _expand_workers([int(n) for n in a.workers.split(",")])
    plan = QUICK if a.quick else FULL
    if a.rounds:
        plan = Plan(a.rounds, plan.mtus, plan.iperf_seconds, plan.conn_seconds, plan.udp_count, plan.flows)
    if os.geteuid() != 0:
        print("the benchmark needs root (namespaces, TUN)", file=sys.stderr)
        return 2
    for tool, path in (("iperf3", shutil.which("iperf3")), ("sing-box", str(SING_BOX) if SING_BOX.exists() else None)):
        if path is None:
            print(f"missing {tool}: run ./scripts/install", file=sys.stderr)
            return 2
    _raise_nofile()
    signal.signal(signal.SIGTERM, _interrupt)

    proxies = [p for p in PROXIES if not a.only or p.key.split("@")[0] in a.only]
    samples: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    cmd = (".venv/bin/python bench/run.py" + (" --quick" if a.quick else "") + (f" --rounds {a.rounds}" if a.rounds else "")
           + (f" --workers {a.workers}" if a.workers else ""))
    started = datetime.datetime.now(datetime.UTC)
    workdir = Path(tempfile.mkdtemp(prefix="tunray-bench-"))
    try:
        for r in range(plan.rounds):
            order = proxies[r % len(proxies):] + proxies[: r % len(proxies)]
            print(f"round {r + 1}/{plan.rounds}: " + ", ".join(p.label for p in order), flush=True)
            for mtu in plan.mtus:
                for proxy in order:
                    for k, v in run_proxy(proxy, mtu, plan, workdir, lambda s: print(s, flush=True)).items():
                        samples[proxy.key][k].append(v)
    except KeyboardInterrupt:
        print("interrupted; everything was cleaned up", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    med = {p: {k: statistics.median(v) for k, v in d.items()} for p, d in samples.items()}
    ms = metrics(plan)
    tbl = table(ms, med)
    notes = "".join(f"* {n}\n" for n in sorted(NOTES))
    print()
    print(tbl + notes)
    minutes = (datetime.datetime.now(datetime.UTC) - started).total_seconds() / 60
    if not a.no_write and not a.only:
        body = (f"Command: `sudo {cmd}` ({plan.rounds} round(s), median; took {minutes:.0f} min)  \n"
                f"Date: {started:%Y-%m-%d %H:%M} UTC  \n"
                f"Machine: {machine()}\n\n{tbl}\n{notes}\n![ratios](benchmarks.png)\n")
        write_doc(body)
        CHART.write_bytes(chart(ms, med, f"TUNRAY VS SING-BOX, {started:%Y-%m-%d}"))
        print(f"wrote {DOC.relative_to(REPO)} and {CHART.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
