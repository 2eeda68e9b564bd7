"""Benchmark: app -> TUN -> VLESS -> sing-box server -> iperf3 / echo; tunray vs sing-box as the client.

    .venv/bin/python plugins/outbound_vless/bench/bench_vless_tun.py [--seconds 5] [--cps-seconds 3]

Root only.  One client/server namespace pair (:class:`tunray.testing.netns.Topology`)
for the whole run::

    client ns                                     server ns
    iperf3 -c / cps app ──> TUN (203.0.113.0/24)   lo 203.0.113.10: iperf3 -s, echo
    contender: TUN inbound + vless outbound ──────> 10.200.0.2:10001 sing-box VLESS (raw TCP)
                                                    10.200.0.2:10002 sing-box VLESS (TLS)

Contenders, one at a time, same MTU (9000, as in ``configs/vless-*.json``): tunray
(``python -m tunray run``, python stack) and sing-box with a ``tun`` inbound (gvisor
and system stacks) and a ``vless`` outbound.  Per contender and path (raw, TLS):
iperf3 single stream up and down (Mbit/s), then connections per second (sequential
connect, 8-byte echo, close, through the TUN).  Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from tunray.testing.certs import SelfSigned, make_cert  # noqa: E402
from tunray.testing.netns import Topology, ns_exec  # noqa: E402
from vless_servers import USER_ID, RunningServer, sing_box_path, start_sing_box, vless_outbound  # noqa: E402

HOST = "203.0.113.10"
ROUTE = "203.0.113.0/24"
ECHO = 7000
IPERF = 5201
MTU = 9000
TUN = "vbtun0"

CPS_APP = """
import socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
count, start = 0, time.monotonic()
while time.monotonic() - start < seconds:
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"ping1234")
        got = b""
        while len(got) < 8:
            chunk = s.recv(8 - len(got))
            if not chunk:
                raise SystemExit("echo closed early")
            got += chunk
        assert got == b"ping1234"
    count += 1
print(count / (time.monotonic() - start))
"""


def tunray_config(server: RunningServer, cert: SelfSigned | None) -> dict[str, Any]:
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
                    "stack": "python",
                    "maxFlows": 16384,
                },
            }
        ],
        "outbounds": [dict(vless_outbound(server, tls=cert), tag="proxy")],
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

    def build(self) -> tuple[RunningServer, RunningServer, SelfSigned]:
        t = self.topo
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

    def cps(self, seconds: float) -> float:
        res = ns_exec(self.topo.client, "/usr/bin/python3", "-c", CPS_APP, HOST, str(ECHO), str(seconds), check=False)
        if res.returncode != 0:
            raise RuntimeError(f"cps app failed: {res.stderr[-400:]}")
        return float(res.stdout.strip())

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
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0, help="iperf3 duration per direction")
    parser.add_argument("--cps-seconds", type=float, default=3.0)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-vless-tun-"))
    bench = Bench(workdir)
    rows: list[tuple[str, str, float, float, float]] = []
    try:
        raw, tls, cert = bench.build()
        contenders: list[tuple[str, list[str], Any, bool]] = [
            ("tunray (python stack)", [sys.executable, "-m", "tunray", "run", "-c"], tunray_config, False),
            ("sing-box gvisor", [sing_box_path(), "run", "--disable-color", "-c"], "gvisor", True),
            ("sing-box system", [sing_box_path(), "run", "--disable-color", "-c"], "system", True),
        ]
        for label, argv, how, add_route in contenders:
            for path, server, c in (("raw TCP", raw, None), ("TLS", tls, cert)):
                config = how(server, c) if callable(how) else sing_box_config(server, c, how)
                name = f"{label.split()[0]}-{how if isinstance(how, str) else 'tunray'}-{server.port}"
                bench.start(name, argv, config, add_route)
                try:
                    up = bench.iperf(args.seconds, reverse=False)
                    down = bench.iperf(args.seconds, reverse=True)
                    cps = bench.cps(args.cps_seconds)
                finally:
                    bench.stop()
                rows.append((label, path, up, down, cps))
                print(f"{label:<22} {path:<8} up {up:8.0f} Mbit/s  down {down:8.0f} Mbit/s  {cps:6.0f} conn/s", flush=True)
    finally:
        bench.close()
    print()
    print(f"MTU {MTU}, iperf3 single stream {args.seconds:g} s per direction, connections for {args.cps_seconds:g} s")
    print()
    print("| client | VLESS path | upload Mbit/s | download Mbit/s | conn/s |")
    print("|---|---|---:|---:|---:|")
    for label, path, up, down, cps in rows:
        print(f"| {label} | {path} | {up:.0f} | {down:.0f} | {cps:.0f} |")


if __name__ == "__main__":
    main()
