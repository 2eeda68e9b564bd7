"""Real connections during a spoofed SYN flood through tunray's TUN (root only).

    sudo .venv/bin/python bench/bench_synflood.py                       # the issue's figures
    sudo .venv/bin/python bench/bench_synflood.py --rate 2000 --seconds 3 --clients 30   # smoke
    sudo .venv/bin/python bench/bench_synflood.py --stack lwip       # or system: no cookies, eviction

World: bench/world.py (tunray in the client namespace, its TUN captures 203.0.113.0/24, the
echo server on 203.0.113.10 in the server namespace).  A flooder process writes SYNs from
``--sources`` spoofed LAN addresses (10.128.0.0/10) to the echo port straight into the TUN
(AF_PACKET: nothing but the test namespaces is ever addressed) at ``--rate`` per second,
while this process connects as a real app ``--clients`` times, evenly spread, each an echo
of 64 bytes with a 3 s timeout.  Reported:

* real connections that succeeded (target: >= 95 %);
* tunray's RSS idle and at its peak during the flood (target: within 2x idle);
* upstream dials made for the flood (access-log ``accepted`` lines minus the real
  successes) against the budget (``maxHalfOpen`` per handshake timeout), and the stack's
  counters (SYN cookies sent/accepted, half-open evictions) from SIGUSR1.

Prints one JSON object; docs/THREAT_MODEL.md quotes a smoke run, the coordinator records
a quiet-machine run in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from world import ECHO_PORT, HOST4, PROXIES, Proxy, World

FLOODER = r"""
import socket, struct, sys, time
tun, dst, port, rate, seconds, sources = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b)); s = (s >> 16) + (s & 0xFFFF); s += s >> 16
    return ~s & 0xFFFF
d = socket.inet_aton(dst)
packets = []
for i in range(sources):
    s = bytes((10, 128 + (i >> 16 & 63), i >> 8 & 255, i & 255 or 1))
    t = struct.pack("!HHIIBBHHH", 1024 + i % 60000, port, i * 7919 & 0xFFFFFFFF, 0, 5 << 4, 2, 65535, 0, 0)
    t = t[:16] + struct.pack("!H", csum(s + d + struct.pack("!BBH", 0, 6, 20) + t)) + t[18:]
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, i & 0xFFFF, 0, 64, 6, 0, s, d)
    packets.append(h[:10] + struct.pack("!H", csum(h)) + h[12:] + t)
out = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM)
print("ready", flush=True); sys.stdin.readline()
sent, start, n = 0, time.monotonic(), len(packets)
while (now := time.monotonic()) - start < seconds:
    due = int((now - start) * rate)
    while sent < due:
        try: out.sendto(packets[sent % n], (tun, 0x0800))
        except OSError: pass
        sent += 1
    time.sleep(0.002)
print(sent, flush=True)
"""


@dataclass(frozen=True)
class FloodedTunray(Proxy):
    max_half_open: int = 256
    per_source: int = 64
    access_log: str = ""

    def config(self, mtu: int, uplink: str, *, sniff: bool = False) -> dict[str, Any]:
        raw: dict[str, Any] = super().config(mtu, uplink, sniff=sniff)
        raw["log"] = {"loglevel": "warning", "access": self.access_log}
        tun = raw["inbounds"][0]["settings"]
        tun.update(maxHalfOpen=self.max_half_open, maxHalfOpenPerSource=self.per_source)
        return raw


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _client(world: World, count: int, seconds: float, result: dict[str, int]) -> None:
    gap = seconds / max(count, 1)
    with world.topo.enter(world.client):
        for i in range(count):
            t0 = time.monotonic()
            try:
                with socket.create_connection((HOST4, ECHO_PORT), timeout=3) as s:
                    s.settimeout(3)
                    msg = b"real-%05d-" % i + b"x" * 52
                    s.sendall(msg)
                    got = b""
                    while len(got) < len(msg):
                        chunk = s.recv(128)
                        if not chunk:
                            break
                        got += chunk
                result["ok" if got == msg else "failed"] += 1
            except OSError:
                result["failed"] += 1
            time.sleep(max(0.0, gap - (time.monotonic() - t0)))


def main() -> None:
    ap = argparse.ArgumentParser(prog="bench/bench_synflood.py")
    ap.add_argument("--rate", type=int, default=10_000, help="spoofed SYNs per second")
    ap.add_argument("--sources", type=int, default=65_536, help="distinct spoofed source addresses")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--clients", type=int, default=200, help="real connections during the flood")
    ap.add_argument("--max-half-open", type=int, default=256)
    ap.add_argument("--per-source", type=int, default=64)
    ap.add_argument("--stack", choices=("python", "lwip", "system"), default="python",
                    help="python answers beyond the budget with SYN cookies; lwip and system evict the oldest")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tunray-synflood-") as tmp:
        workdir = Path(tmp)
        access = workdir / "access.log"
        key = "tunray" if args.stack == "python" else f"tunray-{args.stack}"
        base = next(p for p in PROXIES if p.key == key)
        proxy = FloodedTunray(base.key, base.label, base.tun, base.fds_per_flow, max_half_open=args.max_half_open,
                              per_source=args.per_source, access_log=str(access))
        world = World(workdir)
        try:
            pid = world.start(proxy, 1500)
            time.sleep(1.0)
            idle = _rss(pid)
            flooder = subprocess.Popen(
                ["ip", "netns", "exec", world.client, sys.executable, "-c", FLOODER, proxy.tun, HOST4,
                 str(ECHO_PORT), str(args.rate), str(args.seconds), str(args.sources)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
            assert flooder.stdout is not None and flooder.stdin is not None
            assert flooder.stdout.readline().strip() == "ready"
            before = access.read_text().count("accepted") if access.exists() else 0
            result = {"ok": 0, "failed": 0}
            flooder.stdin.write("go\n")
            flooder.stdin.flush()
            time.sleep(0.5)  # the flood is on before the first real connection
            client = threading.Thread(target=_client, args=(world, args.clients, args.seconds - 1.0, result))
            client.start()
            peak = idle
            while client.is_alive() or flooder.poll() is None:
                peak = max(peak, _rss(pid))
                time.sleep(0.1)
            client.join()
            sent = int(flooder.stdout.read().split()[-1])
            time.sleep(0.5)
            assert world.proc is not None
            world.proc.send_signal(signal.SIGUSR1)
            time.sleep(0.5)
            stats: dict[str, Any] = {}
            for line in world._log_path.read_text(errors="replace").splitlines():
                if "stats {" in line:
                    stats = json.loads(line[line.index("stats {") + 6 :])["inbounds"]
            dials = access.read_text().count("accepted") - before
        finally:
            world.close()
    stack = next(iter(stats.values()), {})
    real = result["ok"] + result["failed"]
    print(json.dumps({
        "stack_name": args.stack,
        "flood": {"rate": args.rate, "sources": args.sources, "seconds": args.seconds, "syns_sent": sent},
        "real_connections": {"attempted": real, "succeeded": result["ok"],
                             "success_pct": round(100 * result["ok"] / max(real, 1), 1)},
        "rss_mib": {"idle": round(idle / 2**20, 1), "peak": round(peak / 2**20, 1),
                    "ratio": round(peak / max(idle, 1), 2)},
        "upstream_dials": {"by_flood": max(dials - result["ok"], 0), "total": dials,
                           "budget": f"maxHalfOpen={args.max_half_open} per handshake timeout"},
        "stack": {k: stack.get(k, 0) for k in ("tcp_connections", "tcp_syn_cookies_sent", "tcp_syn_cookies_accepted",
                                                "tcp_half_open_evicted", "tcp_max_flows", "tcp_open")},
    }, indent=1))


if __name__ == "__main__":
    main()
