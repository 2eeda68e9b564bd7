"""Network-namespace topologies for tests (root only).

``Topology.create()`` makes two namespaces, ``client`` and ``server``, joined by a veth
pair with IPv4 and IPv6 addresses, and ``remove()`` deletes them (and everything in
them).  Names carry a random suffix so parallel runs do not collide.  Addresses::

    client  veth-c  10.200.0.1/24  fd00:200::1/64
    server  veth-s  10.200.0.2/24  fd00:200::2/64

``enter(name)`` switches the *calling thread* into a namespace for a ``with`` block,
so sockets the test (or an in-process tunray) opens there live in that namespace.
``run(name, argv)`` starts a process inside a namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def ns_exec(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *args], check=check, capture_output=True, text=True)


def delete_namespace(ns: str) -> None:
    """Kill anything still running inside *ns*, then delete it (which removes its links)."""
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)
    ip("netns", "del", ns, check=False)


@dataclass
class Topology:
    client: str
    server: str
    client_v4: ipaddress.IPv4Address = ipaddress.IPv4Address("10.200.0.1")
    server_v4: ipaddress.IPv4Address = ipaddress.IPv4Address("10.200.0.2")
    client_v6: ipaddress.IPv6Address = ipaddress.IPv6Address("fd00:200::1")
    server_v6: ipaddress.IPv6Address = ipaddress.IPv6Address("fd00:200::2")
    client_if: str = "veth-c"
    server_if: str = "veth-s"
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    def create(cls, prefix: str = "tr") -> Topology:
        suffix = secrets.token_hex(3)
        topo = cls(client=f"{prefix}c-{suffix}", server=f"{prefix}s-{suffix}")
        try:
            topo._build()
        except BaseException:
            topo.remove()
            raise
        return topo

    def _build(self) -> None:
        ip("netns", "add", self.client)
        ip("netns", "add", self.server)
        tmp_c, tmp_s = f"trc{secrets.token_hex(3)}", f"trs{secrets.token_hex(3)}"
        ip("link", "add", tmp_c, "type", "veth", "peer", "name", tmp_s)
        ip("link", "set", tmp_c, "netns", self.client, "name", self.client_if)
        ip("link", "set", tmp_s, "netns", self.server, "name", self.server_if)
        for ns, ifname, v4, v6 in (
            (self.client, self.client_if, self.client_v4, self.client_v6),
            (self.server, self.server_if, self.server_v4, self.server_v6),
        ):
            ns_exec(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0")
            ns_exec(ns, "ip", "link", "set", "lo", "up")
            ns_exec(ns, "ip", "addr", "add", f"{v4}/24", "dev", ifname)
            ns_exec(ns, "ip", "addr", "add", f"{v6}/64", "dev", ifname, "nodad")
            ns_exec(ns, "ip", "link", "set", ifname, "up")

    def remove(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for stream in (proc.stdout, proc.stderr, proc.stdin):
                if stream is not None:
                    stream.close()
        self.procs.clear()
        for ns in (self.client, self.server):
            delete_namespace(ns)

    @contextlib.contextmanager
    def enter(self, ns: str) -> Iterator[None]:
        """Run the ``with`` body (this thread only) inside namespace *ns*."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            setns(target)
            yield
        finally:
            setns(own)
            os.close(own)
            os.close(target)

    def spawn(self, ns: str, argv: Sequence[str], *, ready: bytes | None = None, timeout: float = 10.0) -> subprocess.Popen[bytes]:
        """Start *argv* in *ns*; with *ready*, wait until the process prints that line."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.procs.append(proc)
        if ready is not None:
            assert proc.stdout is not None
            import select

            end = _now() + timeout
            line = b""
            while ready not in line:
                left = end - _now()
                if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
                    proc.kill()
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    raise RuntimeError(f"{argv[0]} in {ns} did not become ready: {err.strip()[-500:]}")
                line = proc.stdout.readline()
                if not line:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    raise RuntimeError(f"{argv[0]} in {ns} exited: {err.strip()[-500:]}")
        return proc

    def start_echo(self, ns: str | None = None, *, port: int = 7000) -> subprocess.Popen[bytes]:
        """Run :mod:`tunray.testing.echo` in *ns* (default: the server) on ``port`` .. ``port+3``."""
        return self.spawn(
            ns or self.server,
            [sys.executable, "-m", "tunray.testing.echo", "--port", str(port)],
            ready=b"ready",
        )


def _now() -> float:
    import time

    return time.monotonic()


def namespaces_clean(prefix: str = "tr") -> bool:
    """True if no namespace made by these helpers is left."""
    out = ip("netns", "list", check=False).stdout
    return not any(line.split()[0].startswith((f"{prefix}c-", f"{prefix}s-")) for line in out.splitlines() if line)
