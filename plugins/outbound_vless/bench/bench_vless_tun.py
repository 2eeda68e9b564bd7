"""Benchmark: app -> TUN -> VLESS -> sing-box server -> iperf3 / echo; tunray vs sing-box as the client.

    .venv/bin/python plugins/outbound_vless/bench/bench_vless_tun.py [--seconds 5] [--cps-seconds 3]
    .venv/bin/python plugins/outbound_vless/bench/bench_vless_tun.py --no-iperf --path tls --rounds 3   # TLS conn/s only

Root only.  One client/server namespace pair (:class:`tunray.testing.netns.Topology`)
for the whole run::

    client ns                                     server ns
    iperf3 -c / cps app ──> TUN (203.0.113.0/24)   lo 203.0.113.10: iperf3 -s, echo
    contender: TUN inbound + vless outbound ──────> 10.200.0.2:10001 sing-box VLESS (raw TCP)
                                                    10.200.0.2:10002 sing-box VLESS (TLS)

Contenders, one at a time, same MTU (9000, as in ``configs/vless-*.json``): tunray
(``python -m tunray run``, python stack; with ``--only tunray-system`` also its system
stack) and sing-box with a ``tun`` inbound (gvisor and system stacks) and a ``vless``
outbound.  Per contender and path (raw, TLS): iperf3 single stream up and down (Mbit/s),
then connections per second with the median time of one connection and the client
proxy's CPU time per connection (user + system, summed over tunray's supervisor and
workers), which varies less with other load on the machine than the rate does.  With
``--rounds`` the contenders alternate and each figure is the median.  Prints a markdown table;
with ``--timeline`` (TLS, sequential; needs tcpdump) also one connection's steps per client
(:mod:`timeline`: where the time of a connection goes, from a capture in the client namespace).

The connection loop is *sequential* (connect, 8-byte echo, close, then the next): the
rate is 1 / the latency of one connection, so it measures the critical path of a
connection (client proxy, server, kernel), not how many a proxy can carry in parallel.
Each client runs with its defaults, which differ where a user would see it:

* the app's SYN: tunray (both stacks, ``handshake: "lazy"``) and sing-box gvisor answer
  it once the VLESS server's TCP and TLS handshakes are done (a refused or broken server
  is a refused connection for the app); sing-box system lets the kernel answer at once;
* TLS: tunray (OpenSSL 3.0) offers an X25519 key share, sing-box (Go) X25519MLKEM768 and
  X25519 (its ClientHello is ~1.5 KB, and the server does the ML-KEM step); both do a
  full handshake per connection (no session resumption by default) and send
  ``close_notify`` when the app half-closes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import timeline  # noqa: E402
from tunray.testing.certs import SelfSigned, make_cert  # noqa: E402
from tunray.testing.netns import Topology, ns_exec  # noqa: E402
from tunray.workers import process_tree  # noqa: E402
from vless_servers import USER_ID, RunningServer, sing_box_path, start_sing_box, vless_outbound  # noqa: E402

HOST = "203.0.113.10"
ROUTE = "203.0.113.0/24"
ECHO = 7000
IPERF = 5201
MTU = 9000
TUN = "vbtun0"

CPS_APP = """
import socket, statistics, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
count, start, took = 0, time.monotonic(), []
while time.monotonic() - start < seconds:
    t0 = time.perf_counter()
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"ping1234")
        got = b""
        while len(got) < 8:
            chunk = s.recv(8 - len(got))
            if not chunk:
                raise SystemExit("echo closed early")
            got += chunk
        assert got == b"ping1234"
    took.append(time.perf_counter() - t0)
    count += 1
print(count / (time.monotonic() - start), statistics.median(took) * 1e6)
"""


PROFILE = os.environ.get("BENCH_PYSPY", "")  # write a py-spy raw profile of tunray's cps run here
RESUME = False  # --resume: tunray's tlsSettings.enableSessionResumption
WORKERS: int | None = None  # --workers: the TUN's "workers" (None: the default, one per CPU)
HANDSHAKE: str | None = None  # --handshake: the TUN's "handshake" (None: the default, lazy)


def tunray_config(server: RunningServer, cert: SelfSigned | None, stack: str = "python") -> dict[str, Any]:
    extra: dict[str, Any] = {} if WORKERS is None else {"workers": WORKERS}
    if HANDSHAKE is not None:
        extra["handshake"] = HANDSHAKE
    outbound = dict(vless_outbound(server, tls=cert), tag="proxy")
    if RESUME and cert is not None:
        outbound["streamSettings"]["tlsSettings"]["enableSessionResumption"] = True
    return {
        "log": {"loglevel": "warning", "access": "none"},
        "inbounds": [
            {
                "protocol": "tun",
                "tag": "tun-in",
                "settings": {
                    "name": TUN,
                    "mtu": MTU,
                    "gateway": ["172.19.0.1/30"],
                    "autoSystemRoutingTable": [ROUTE],
                    "autoOutboundsInterface": "",  # the server is on the veth subnet: no loop
                    "stack": stack,
                    "maxFlows": 16384,
                    **extra,
                },
            }
        ],
        "outbounds": [outbound],
    }


def sing_box_config(server: RunningServer, cert: SelfSigned | None, stack: str) -> dict[str, Any]:
    ob: dict[str, Any] = {
        "type": "vless",
        "tag": "proxy",
        "server": server.host,
        "server_port": server.port,
        "uuid": USER_ID,
    }
    if cert is not None:
        ob["tls"] = {"enabled": True, "server_name": "vless.test", "certificate_path": str(cert.cert_file)}
    tun = {
        "type": "tun",
        "tag": "tun-in",
        "interface_name": TUN,
        "address": ["172.19.0.1/30"],
        "mtu": MTU,
        "auto_route": False,
        "stack": stack,
    }
    return {"log": {"level": "warn"}, "inbounds": [tun], "outbounds": [ob]}


class Bench:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.topo = Topology.create(prefix="vb")
        self.servers: list[RunningServer] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.name = ""

    def build(self) -> tuple[RunningServer, RunningServer, SelfSigned]:
        t = self.topo
        for ns in (t.client, t.server):
            # thousands of short connections a run, each leaving a TIME_WAIT on the side
            # that dials: without reuse and a wide port range every client fell to ~100
            # conn/s after the first round (the server's dials to the echo ran out of ports)
            ns_exec(ns, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1")
            ns_exec(ns, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000")
        ns_exec(t.server, "ip", "addr", "add", f"{HOST}/32", "dev", "lo")
        t.start_echo(port=ECHO)
        t.spawn(t.server, ["iperf3", "-s", "-p", str(IPERF)])
        cert = make_cert(self.workdir, ips=(str(t.server_v4),))
        prefix = ["ip", "netns", "exec", t.server]
        host = str(t.server_v4)
        raw = start_sing_box(self.workdir, host=host, port=10001, prefix=prefix)
        self.servers.append(raw)
        tls = start_sing_box(self.workdir, host=host, port=10002, prefix=prefix, tls=cert)
        self.servers.append(tls)
        return raw, tls, cert

    def start(self, name: str, argv: list[str], config: dict[str, Any], add_route: bool) -> None:
        self.name = name
        path = self.workdir / f"{name}.json"
        path.write_text(json.dumps(config, indent=1))
        log = (self.workdir / f"{name}.log").open("wb")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.topo.client, *argv, str(path)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        end = time.monotonic() + 20
        routed = not add_route
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {(self.workdir / f'{name}.log').read_text()[-600:]}")
            if not routed:
                res = ns_exec(self.topo.client, "ip", "route", "replace", ROUTE, "dev", TUN, check=False)
                routed = res.returncode == 0
            elif self._probe():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not carry a flow: {(self.workdir / f'{name}.log').read_text()[-600:]}")

    def _probe(self) -> bool:
        if f"dev {TUN}" not in ns_exec(self.topo.client, "ip", "route", "get", HOST, check=False).stdout:
            return False
        with self.topo.enter(self.topo.client):
            try:
                with socket.create_connection((HOST, ECHO), timeout=2) as s:
                    s.sendall(b"probe")
                    return s.recv(16) == b"probe"
            except OSError:
                return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # sing-box leaves nothing; make sure the next contender gets a fresh TUN name
        ns_exec(self.topo.client, "ip", "link", "del", TUN, check=False)

    def iperf(self, seconds: float, reverse: bool) -> float:
        argv = ["iperf3", "-c", HOST, "-p", str(IPERF), "-t", str(seconds), "-J"] + (["-R"] if reverse else [])
        res = ns_exec(self.topo.client, *argv, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"iperf3 failed: {res.stdout[-400:]} {res.stderr[-400:]}")
        report = json.loads(res.stdout)
        return float(report["end"]["sum_received"]["bits_per_second"]) / 1e6

    def cpu(self) -> float:
        """CPU seconds (user + system) the running contender used so far, all its processes."""
        assert self.proc is not None
        total = 0
        for p in process_tree(self.proc.pid):
            try:
                fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def cps(self, seconds: float, parallel: int = 1, capture: Path | None = None) -> tuple[float, float, float]:
        """(connections per second, median µs from connect to close, contender CPU µs per connection).

        *parallel* copies of the sequential loop run at once: their rates add up, the median is
        the median of theirs.  With *capture*, tcpdump records the client namespace meanwhile
        (:mod:`timeline`).
        """
        assert self.proc is not None
        spy = None
        if PROFILE and "tunray" in self.name:  # py-spy flame data of the contender during the run
            spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "-o", PROFILE, "-f", "raw",
                                    "-r", os.environ.get("PYSPY_RATE", "400"), "--subprocesses", *(["--native"] if os.environ.get("PYSPY_NATIVE") else ["--nonblocking"]), "--pid", str(self.proc.pid),
                                    "-d", str(int(seconds))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        dump = timeline.start(self.topo.client, capture) if capture is not None else None
        if dump is not None:
            time.sleep(0.5)  # tcpdump is listening
        cpu0 = self.cpu()
        apps = [
            subprocess.Popen(["ip", "netns", "exec", self.topo.client, "/usr/bin/python3", "-c", CPS_APP, HOST,
                              str(ECHO), str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(parallel)
        ]
        outs = [app.communicate() for app in apps]
        cpu = self.cpu() - cpu0
        if dump is not None:
            timeline.stop(dump)
        if spy is not None:
            spy.wait(60)
        rates: list[float] = []
        p50s: list[float] = []
        for app, (out, err) in zip(apps, outs, strict=True):
            if app.returncode != 0:
                raise RuntimeError(f"cps app failed: {err[-400:]}")
            rate, p50 = (float(v) for v in out.split())
            rates.append(rate)
            p50s.append(p50)
        rate = sum(rates)
        return rate, statistics.median(p50s), cpu / max(1.0, rate * seconds) * 1e6

    def close(self) -> None:
        try:
            self.stop()
        finally:
            for srv in self.servers:
                srv.stop()
            procs = list(self.topo.procs)
            self.topo.remove()
            for p in procs:
                for pipe in (p.stdout, p.stderr, p.stdin):
                    if pipe is not None:
                        pipe.close()


def main() -> None:
    global WORKERS, RESUME, HANDSHAKE
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0, help="iperf3 duration per direction")
    parser.add_argument("--cps-seconds", type=float, default=3.0)
    parser.add_argument("--parallel", type=int, default=1,
                        help="sequential connection loops at once (default 1: the rate is 1 / latency)")
    parser.add_argument("--no-iperf", action="store_true", help="connections per second only")
    parser.add_argument("--path", choices=("raw", "tls"), action="append", help="only these VLESS paths")
    parser.add_argument("--only", choices=("tunray", "tunray-system", "sb-gvisor", "sb-system"), action="append",
                        help="only these clients (default: all but tunray-system)")
    parser.add_argument("--rounds", type=int, default=1, help="alternate the clients this many times; medians")
    parser.add_argument("--workers", type=int, help="tunray's TUN workers (default: one per CPU)")
    parser.add_argument("--timeline", action="store_true",
                        help="TLS, sequential: capture with tcpdump and print the median µs of each step of a connection")
    parser.add_argument("--resume", action="store_true", help="tunray: tlsSettings.enableSessionResumption")
    parser.add_argument("--handshake", choices=("lazy", "eager"),
                        help='tunray\'s TUN "handshake" (default lazy; eager answers the SYN at once, as '
                             "sing-box system's kernel does)")
    args = parser.parse_args()
    WORKERS, RESUME, HANDSHAKE = args.workers, args.resume, args.handshake
    if args.timeline and not timeline.available():
        print("--timeline needs tcpdump (apt-get install tcpdump); no timeline this run", file=sys.stderr)
        args.timeline = False
    timelines: dict[str, list[dict[str, float]]] = {}
    workdir = Path(tempfile.mkdtemp(prefix="bench-vless-tun-"))
    bench = Bench(workdir)
    samples: dict[tuple[str, str], list[tuple[float, float, float, float, float]]] = {}
    try:
        raw, tls, cert = bench.build()
        tunray = [sys.executable, "-m", "tunray", "run", "-c"]
        contenders: list[tuple[str, str, list[str], Any, bool]] = [
            ("tunray", "tunray (python stack)", tunray, tunray_config, False),
            ("tunray-system", "tunray (system stack)", tunray, partial(tunray_config, stack="system"), False),
            ("sb-gvisor", "sing-box gvisor", [sing_box_path(), "run", "--disable-color", "-c"], "gvisor", True),
            ("sb-system", "sing-box system", [sing_box_path(), "run", "--disable-color", "-c"], "system", True),
        ]
        contenders = [c for c in contenders if c[0] in args.only] if args.only else [
            c for c in contenders if c[0] != "tunray-system"]
        paths = [p for p in (("raw TCP", raw, None), ("TLS", tls, cert))
                 if not args.path or ("tls" if p[2] is not None else "raw") in args.path]
        for r in range(args.rounds):
            order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
            for key, label, argv, how, add_route in order:
                for path, server, c in paths:
                    config = how(server, c) if callable(how) else sing_box_config(server, c, how)
                    bench.start(f"{key}-{server.port}-{r}", argv, config, add_route)
                    try:
                        up = 0.0 if args.no_iperf else bench.iperf(args.seconds, reverse=False)
                        down = 0.0 if args.no_iperf else bench.iperf(args.seconds, reverse=True)
                        capture = None
                        if args.timeline and c is not None and args.parallel == 1:
                            capture = workdir / f"{key}-{r}.pcap"
                        cps, p50, cpu_us = bench.cps(args.cps_seconds, args.parallel, capture)
                        if capture is not None:
                            timelines.setdefault(label, []).append(timeline.steps(capture, ECHO, server.port))
                    finally:
                        bench.stop()
                    samples.setdefault((label, path), []).append((up, down, cps, p50, cpu_us))
                    print(f"{label:<22} {path:<8} up {up:8.0f} Mbit/s  down {down:8.0f} Mbit/s  {cps:6.0f} conn/s"
                          f"  p50 {p50:5.0f} µs  {cpu_us:5.0f} µs CPU/conn", flush=True)
    finally:
        bench.close()
    print()
    print(f"MTU {MTU}, iperf3 single stream {args.seconds:g} s per direction, connections for {args.cps_seconds:g} s "
          f"({args.parallel} loop(s) at once), {args.rounds} round(s), medians")
    print()
    print("| client | VLESS path | upload Mbit/s | download Mbit/s | conn/s | connection p50 µs | client CPU µs/conn |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for (label, path), rows in samples.items():
        up, down, cps, p50, cpu_us = (statistics.median(col) for col in zip(*rows, strict=True))
        print(f"| {label} | {path} | {up:.0f} | {down:.0f} | {cps:.0f} | {p50:.0f} | {cpu_us:.0f} |")
    if timelines:
        labels = list(timelines)
        print()
        print("TLS, one connection step by step (µs, median over connections, then over rounds; "
              "see plugins/outbound_vless/bench/timeline.py)")
        print()
        print("| step | " + " | ".join(labels) + " |")
        print("|---|" + "---:|" * len(labels))
        for step in timeline.STEPS:
            cells = []
            for label in labels:
                values = [t[step] for t in timelines[label] if step in t]
                cells.append(f"{statistics.median(values):.0f}" if values else "–")
            print(f"| {step} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
