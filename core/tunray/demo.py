"""The TUN demo behind ``sudo ./scripts/demo``: real traffic through tunray, in namespaces.

Run as root with ``python -m tunray.demo`` (``--help`` for options).  It builds::

    client ns                                            server ns
    curl / echo client                                   lo: 203.0.113.10/32 (+ IPv6)
       │  route 203.0.113.0/24 dev tunray0 (by tunray)   http.server  :8080  (64 MiB file)
       ▼                                                 echo server  :7000  (TCP + UDP)
    tunray0 ── tunray (python stack, or --stack lwip) ── freedom ─ veth-c ═══ veth-s
                    (autoOutboundsInterface binds its dials to veth-c: no loop)

The addresses come from the committed config (``configs/tun-demo-freedom.json``): the
server gets host ``.10`` of the first IPv4 prefix in ``autoSystemRoutingTable`` (and
``::10`` of the first IPv6 one).  tunray runs as a subprocess,
``python -m tunray run -c CONFIG`` under ``ip netns exec``; its stdout is the access log.

Everything (processes, namespaces and so the TUN, the temporary directory) is removed
in ``finally``, on success, failure, Ctrl-C or SIGTERM.  Exit status 0 means every
check passed.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunray.testing.netns import Topology, ns_exec

HTTP_PORT = 8080
ECHO_PORT = 7000
FILE_NAME = "demo.bin"
REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "configs" / "tun-demo-freedom.json"


class DemoError(Exception):
    """A check failed; the message is one line for the user."""


@dataclass
class DemoPlan:
    """What the committed config implies: TUN name and the server's addresses."""

    config: Path
    tun: str
    stack: str
    host4: ipaddress.IPv4Address
    host6: ipaddress.IPv6Address | None
    prefix4: str  # the routed IPv4 prefix as `ip route` prints it


def plan_from_config(path: Path) -> DemoPlan:
    raw = _load_json(path)
    for ib in raw.get("inbounds", []):
        if ib.get("protocol") == "tun":
            s = ib.get("settings", {})
            break
    else:
        raise DemoError(f"{path}: no inbound with protocol 'tun'")
    nets = [ipaddress.ip_network(p, strict=False) for p in s.get("autoSystemRoutingTable", [])]
    v4 = [n for n in nets if n.version == 4 and n.num_addresses >= 16]
    v6 = [n for n in nets if n.version == 6 and n.num_addresses >= 32]
    if not v4:
        raise DemoError(f"{path}: autoSystemRoutingTable needs an IPv4 prefix of /28 or wider")
    if not s.get("name"):
        raise DemoError(f"{path}: the tun inbound needs a fixed 'name'")
    host6 = ipaddress.IPv6Address(int(v6[0].network_address) + 0x10) if v6 else None
    host4 = ipaddress.IPv4Address(int(v4[0].network_address) + 10)
    return DemoPlan(path, s["name"], s.get("stack", "python"), host4, host6, str(v4[0]))


def _load_json(path: Path) -> dict[str, Any]:
    """The config as tunray reads it (comments, YAML/TOML, includes), not just JSON."""
    from tunray.config import loader

    return loader.load([str(path)])


# --- the world ----------------------------------------------------------------------------------


@dataclass
class World:
    plan: DemoPlan
    topo: Topology
    tmp: Path
    tunray: subprocess.Popen[bytes] | None = None
    access: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def sh(self, ns: str, *argv: str) -> str:
        return ns_exec(ns, *argv).stdout

    def build(self) -> None:
        topo, p = self.topo, self.plan
        self.sh(topo.server, "ip", "addr", "add", f"{p.host4}/32", "dev", "lo")
        if p.host6 is not None:
            self.sh(topo.server, "ip", "addr", "add", f"{p.host6}/128", "dev", "lo")
        for fam, via in (("-4", topo.server_v4), ("-6", topo.server_v6)):
            self.sh(topo.client, "ip", fam, "route", "add", "default", "via", str(via), "dev", topo.client_if, "metric", "100")
        # Replies to tunray's bound sockets arrive on veth-c from addresses routed into the
        # TUN: strict reverse-path filtering would drop them (docs/routing-loops.md).
        for key in ("all", "default", topo.client_if):
            self.sh(topo.client, "sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=2")

    def start_servers(self, size: int) -> str:
        blob = self.tmp / FILE_NAME
        h = hashlib.sha256()
        with blob.open("wb") as f:
            left = size
            while left:
                chunk = os.urandom(min(left, 1 << 20))
                h.update(chunk)
                f.write(chunk)
                left -= len(chunk)
        py = sys.executable
        self.topo.spawn(
            self.topo.server,
            [py, "-u", "-m", "http.server", str(HTTP_PORT), "--bind", "::", "--directory", str(self.tmp)],
            ready=b"Serving HTTP",
        )
        self.topo.start_echo(port=ECHO_PORT)
        return h.hexdigest()

    def start_tunray(self, timeout: float = 20.0) -> None:
        argv = ["ip", "netns", "exec", self.topo.client, sys.executable, "-m", "tunray", "run", "-c", str(self.plan.config)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.tunray = proc
        self.topo.procs.append(proc)
        assert proc.stdout is not None and proc.stderr is not None
        self._drain(proc.stdout, self.access)
        self._drain(proc.stderr, self.errors)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if proc.poll() is not None:
                time.sleep(0.2)
                raise DemoError(f"tunray exited with status {proc.returncode}: {self.error_tail()}")
            out = ns_exec(self.topo.client, "ip", "route", "show", "dev", self.plan.tun, check=False).stdout
            if self.plan.prefix4 in out:
                return
            time.sleep(0.1)
        raise DemoError(f"tunray did not bring {self.plan.tun} up within {timeout:.0f}s: {self.error_tail()}")

    def _drain(self, stream: Any, into: list[str]) -> None:
        def pump() -> None:
            for raw in iter(stream.readline, b""):
                into.append(raw.decode(errors="replace").rstrip())

        t = threading.Thread(target=pump, daemon=True)
        t.start()
        self.threads.append(t)

    def stop_tunray(self) -> int | None:
        proc = self.tunray
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for t in self.threads:
            t.join(2)
        return proc.returncode

    def error_tail(self) -> str:
        return " | ".join(self.errors[-3:]) or "(no output)"


# --- the app's side -------------------------------------------------------------------------------


@dataclass
class Fetch:
    size: int
    seconds: float
    sha256: str
    tool: str


def fetch(world: World, url: str, out: Path) -> Fetch:
    """GET *url* from the client namespace (curl if installed, else urllib) into *out*."""
    if shutil.which("curl"):
        t0 = time.monotonic()
        res = ns_exec(
            world.topo.client,
            "curl", "-sS", "--fail", "--max-time", "300", "-o", str(out), "-w", "%{size_download} %{time_total}", url,
            check=False,
        )
        if res.returncode != 0:
            raise DemoError(f"curl {url} failed ({res.returncode}): {res.stderr.strip()}")
        size_s, secs_s = res.stdout.split()
        secs = float(secs_s) or (time.monotonic() - t0)
        return Fetch(int(size_s), secs, _sha256_file(out), "curl")
    import urllib.request

    with world.topo.enter(world.topo.client):
        t0 = time.monotonic()
        h = hashlib.sha256()
        n = 0
        with urllib.request.urlopen(url, timeout=300) as r, out.open("wb") as f:
            while chunk := r.read(1 << 20):
                h.update(chunk)
                f.write(chunk)
                n += len(chunk)
        secs = time.monotonic() - t0
    return Fetch(n, secs, h.hexdigest(), "urllib")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def tcp_echo(world: World, host: str, size: int = 256 * 1024) -> float:
    """Send *size* random bytes to the echo server, check they come back; seconds taken."""
    data = os.urandom(size)
    with world.topo.enter(world.topo.client):
        t0 = time.monotonic()
        with socket.create_connection((host, ECHO_PORT), timeout=15) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            got = bytearray()
            while chunk := s.recv(1 << 16):
                got += chunk
        secs = time.monotonic() - t0
    if bytes(got) != data:
        raise DemoError(f"TCP echo via {host}: sent {size} bytes, got {len(got)} back (or different bytes)")
    return secs


def udp_echo(world: World, host: str, count: int = 20) -> list[float]:
    """*count* datagrams to the UDP echo server; the round-trip times of the replies."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    rtts: list[float] = []
    with world.topo.enter(world.topo.client), socket.socket(fam, socket.SOCK_DGRAM) as s:
        # Not connect()ed: the echo server answers from an unbound socket, so a reply to a
        # host on its lo leaves from its veth address, and the full-cone stack shows that.
        s.settimeout(2.0)
        for i in range(count):
            msg = f"tunray demo {i} ".encode() + os.urandom(32)
            t0 = time.monotonic()
            s.sendto(msg, (host, ECHO_PORT))
            try:
                while s.recvfrom(2048)[0] != msg:
                    pass
            except TimeoutError:
                continue
            rtts.append(time.monotonic() - t0)
    if len(rtts) < count // 2:
        raise DemoError(f"UDP echo via {host}: {len(rtts)}/{count} replies")
    return rtts


# --- driver -------------------------------------------------------------------------------------


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _with_stack(config: Path, stack: str, tmp: Path) -> Path:
    """A copy of *config* (as tunray reads it) whose tun inbound uses *stack*."""
    raw = _load_json(config)
    for ib in raw.get("inbounds", []):
        if ib.get("protocol") == "tun":
            ib.setdefault("settings", {})["stack"] = stack
    out = tmp / f"{config.stem}-{stack}.json"
    out.write_text(json.dumps(raw, indent=2))
    return out


def run(config: Path, size_mib: int, say: Any = print, stack: str | None = None) -> int:
    plan = plan_from_config(config)
    tmp = Path(tempfile.mkdtemp(prefix="tunray-demo-"))
    if stack is not None:
        plan = plan_from_config(_with_stack(config, stack, tmp))
    topo: Topology | None = None
    world: World | None = None
    ok = False
    try:
        topo = Topology.create(prefix="demo")
        world = World(plan, topo, tmp)
        world.build()
        digest = world.start_servers(size_mib << 20)
        say(f"namespaces  {topo.client} (app + tunray) <-> {topo.server} (servers at {plan.host4}"
            + (f", {plan.host6})" if plan.host6 else ")"))
        world.start_tunray()
        assert world.tunray is not None
        rel = os.path.relpath(plan.config, Path.cwd())
        say(f"tunray      pid {world.tunray.pid}: tunray run -c {rel}  (TUN {plan.tun}, stack {plan.stack})")

        url = f"http://{plan.host4}:{HTTP_PORT}/{FILE_NAME}"
        got = fetch(world, url, tmp / "fetched.bin")
        rate = got.size / got.seconds if got.seconds else 0.0
        say(f"http GET    {got.size / 2**20:.1f} MiB in {got.seconds:.2f} s = {rate / 2**20:.1f} MiB/s "
            f"({rate * 8 / 1e6:.0f} Mbit/s) with {got.tool}")
        if got.sha256 != digest or got.size != size_mib << 20:
            raise DemoError(f"sha256 mismatch: served {digest[:16]}…, fetched {got.sha256[:16]}… ({got.size} bytes)")
        say(f"sha256      {got.sha256[:16]}… matches the served file")

        hosts = [str(plan.host4)] + ([str(plan.host6)] if plan.host6 else [])
        for host in hosts:
            secs = tcp_echo(world, host)
            rtts = udp_echo(world, host)
            say(f"echo        {host:<16} TCP 256 KiB back in {secs * 1000:.0f} ms; "
                f"UDP {len(rtts)}/20 replies, rtt p50 {statistics.median(rtts) * 1000:.2f} ms")

        time.sleep(0.3)  # let the last flows close so their lines are written
        status = world.stop_tunray()
        lines = [ln for ln in world.access if " accepted " in ln or " rejected " in ln]
        say(f"access log  ({len(lines)} lines from tunray's stdout)")
        for ln in lines:
            say(f"  {ln}")
        if not any(f"{plan.host4}:{HTTP_PORT}" in ln for ln in lines):
            raise DemoError("tunray's access log has no line for the HTTP flow")
        if status not in (0, None):
            raise DemoError(f"tunray exited with status {status} on SIGTERM: {world.error_tail()}")
        ok = True
        say("demo OK")
        return 0
    except DemoError as exc:
        say(f"demo FAILED: {exc}")
        if world is not None and world.errors:
            say("tunray's last log lines:")
            for ln in world.errors[-10:]:
                say(f"  {ln}")
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip clean-up
        try:
            if world is not None:
                world.stop_tunray()
            if topo is not None:
                topo.remove()
            shutil.rmtree(tmp, ignore_errors=True)
            if not ok:
                say("cleaned up (namespaces, processes, TUN, files)")
        finally:
            signal.signal(signal.SIGINT, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunray.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG, help="tunray config with a tun inbound")
    parser.add_argument("--size-mib", type=int, default=64, help="size of the served file (default 64)")
    parser.add_argument("--stack", help="run the tun inbound on this stack (python, lwip, ...) instead of the config's")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the demo needs root (network namespaces and a TUN): sudo ./scripts/demo", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return run(args.config.resolve(), args.size_mib, stack=args.stack)
    except DemoError as exc:
        print(f"demo FAILED: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
