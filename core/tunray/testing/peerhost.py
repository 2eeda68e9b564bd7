"""A test host in its own network namespace, reachable from the test's namespace (root only).

``PeerHost.create()`` makes one namespace joined to the *calling* namespace by a veth pair
on a random /30 out of ``10.250.0.0/16`` (and a /126 out of ``fd00:250::/64``), so tests
running in parallel do not collide.  Servers that must not run in the test's own
namespace (Xray-core, for one) run there; the test dials :attr:`PeerHost.v4` or
:attr:`PeerHost.v6`.  ``remove()`` kills what runs inside and deletes the namespace
(which removes the veth pair).  Nothing here routes beyond the pair.
"""

from __future__ import annotations

import ipaddress
import secrets
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from tunray.testing.netns import delete_namespace, ip, ns_exec


@dataclass
class PeerHost:
    ns: str
    link: str
    v4: str
    v6: str
    local_v4: str
    local_v6: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    def create(cls, prefix: str = "trp") -> PeerHost:
        suffix = secrets.token_hex(3)
        block = secrets.randbelow(1 << 14)  # /30 index within 10.250.0.0/16
        base = int(ipaddress.IPv4Address("10.250.0.0")) + block * 4
        base6 = int(ipaddress.IPv6Address("fd00:250::")) + block * 4
        host = cls(
            ns=f"{prefix}-{suffix}",
            link=f"{prefix}{suffix}",
            local_v4=str(ipaddress.IPv4Address(base + 1)),
            v4=str(ipaddress.IPv4Address(base + 2)),
            local_v6=str(ipaddress.IPv6Address(base6 + 1)),
            v6=str(ipaddress.IPv6Address(base6 + 2)),
        )
        try:
            host._build()
        except BaseException:
            host.remove()
            raise
        return host

    def _build(self) -> None:
        ip("netns", "add", self.ns)
        inner = f"{self.link}i"
        ip("link", "add", self.link, "type", "veth", "peer", "name", inner)
        ip("link", "set", inner, "netns", self.ns, "name", "eth0")
        ip("addr", "add", f"{self.local_v4}/30", "dev", self.link)
        ip("addr", "add", f"{self.local_v6}/126", "dev", self.link, "nodad")
        ip("link", "set", self.link, "up")
        ns_exec(self.ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0")
        ns_exec(self.ns, "ip", "link", "set", "lo", "up")
        ns_exec(self.ns, "ip", "addr", "add", f"{self.v4}/30", "dev", "eth0")
        ns_exec(self.ns, "ip", "addr", "add", f"{self.v6}/126", "dev", "eth0", "nodad")
        ns_exec(self.ns, "ip", "link", "set", "eth0", "up")

    def spawn(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start *argv* inside the namespace (killed by :meth:`remove`)."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def listening(self, port: int, proto: str = "t") -> bool:
        """True once something listens on *port* (TCP, or UDP with ``proto="u"``) inside."""
        out = ns_exec(self.ns, "ss", f"-H{proto}ln", f"sport = :{port}", check=False).stdout
        return bool(out.strip())

    def start_echo(self, port: int = 7000) -> subprocess.Popen[bytes]:
        """Run :mod:`tunray.testing.echo` inside on ``port`` .. ``port+3`` (all addresses)."""
        proc = self.spawn([sys.executable, "-m", "tunray.testing.echo", "--port", str(port)], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        if b"ready" not in proc.stdout.readline():
            raise RuntimeError(f"echo server in {self.ns} did not start")
        return proc

    def remove(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdout, proc.stderr, proc.stdin):
                if stream is not None:
                    stream.close()
        self.procs.clear()
        delete_namespace(self.ns)
        ip("link", "del", self.link, check=False)
