"""Test helpers for the TUN inbound: a packet-recording stack and namespace set-up.

``RecordingStack`` (registered as stack ``"recording"`` by this module's hook) reads
every packet the kernel routes into the TUN and keeps it, yielding no flows; it lets
the device/link tests run without depending on a real TCP/IP stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import subprocess
from collections.abc import Iterator
from typing import Any, ClassVar

from tunray import hookimpl
from tunray.config.schema import Field, Int, Schema
from tunray.device import VNET_HDR_LEN, PacketDevice
from tunray.stack import Flow, Stack, StackClosed, StackOptions
from tunray.stackcore import StackCapabilities
from tunray.testing.netns import Topology, ns_exec
from tunray_tun.inbound import TunInbound


class RecordingStack(Stack):
    name: ClassVar[str] = "recording"
    settings_schema: ClassVar[Schema] = Schema(Field("keep", Int(min=1), default=1000, doc="packets kept"))
    capabilities: ClassVar[StackCapabilities] = StackCapabilities(vnet_hdr=True)  # it strips the header

    def __init__(self, options: StackOptions) -> None:
        super().__init__(options)
        self.packets: list[bytes] = []
        self.device: PacketDevice | None = None
        self._closed = asyncio.Event()
        self._arrived = asyncio.Event()

    async def attach(self, device: PacketDevice) -> None:
        self.device = device
        asyncio.get_running_loop().add_reader(device.fileno(), self._readable)

    def _readable(self) -> None:
        assert self.device is not None
        while (pkt := self.device.read()) is not None:
            if self.device.offloads.vnet_hdr:
                pkt = pkt[VNET_HDR_LEN:]
            if len(self.packets) < self.options.settings.keep:
                self.packets.append(pkt)
            self.count("packets")
            self._arrived.set()

    async def accept(self) -> Flow:
        await self._closed.wait()
        raise StackClosed

    async def aclose(self) -> None:
        if self.device is not None and not self._closed.is_set():
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self.device.fileno())
        self._closed.set()

    async def wait_for(self, dst: str) -> bytes:
        """The first recorded IP packet addressed to *dst* (wrap in ``asyncio.timeout``)."""
        want = ipaddress.ip_address(dst)
        while True:
            for pkt in self.packets:
                if _dst(pkt) == want:
                    return pkt
            self._arrived.clear()
            await self._arrived.wait()


def _dst(pkt: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not pkt:
        return None
    if pkt[0] >> 4 == 4 and len(pkt) >= 20:
        return ipaddress.IPv4Address(pkt[16:20])
    if pkt[0] >> 4 == 6 and len(pkt) >= 40:
        return ipaddress.IPv6Address(pkt[24:40])
    return None


def tun_of(rt: Any) -> TunInbound:
    """The runtime's (first) TUN inbound."""
    for ib in rt.inbounds:
        if isinstance(ib, TunInbound):
            return ib
    raise LookupError("no tun inbound")


class EagerOnlyStack(RecordingStack):
    """A recording stack that declares it cannot hold a SYN, nor read vnet headers."""

    name: ClassVar[str] = "eager-only"
    capabilities: ClassVar[StackCapabilities] = StackCapabilities(lazy_handshake=False, vnet_hdr=False)


@hookimpl
def tunray_register_types(registry: Any) -> None:
    registry.add_stack(RecordingStack)
    registry.add_stack(EagerOnlyStack)


# --- namespaces ----------------------------------------------------------------------------------


@contextlib.contextmanager
def topology() -> Iterator[Topology]:
    """A client/server topology, always removed; asserts nothing of it is left."""
    topo = Topology.create(prefix="tt")
    try:
        yield topo
    finally:
        procs = list(topo.procs)
        topo.remove()
        for proc in procs:  # Topology.remove() leaves the pipes open (ResourceWarning)
            for pipe in (proc.stdout, proc.stderr, proc.stdin):
                if pipe is not None:
                    pipe.close()
        left = ip_netns_list()
        assert topo.client not in left and topo.server not in left, "a test namespace was left behind"


def ip_netns_list() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def ip_json(ns: str, *args: str) -> Any:
    out = ns_exec(ns, "ip", "-j", *args).stdout
    return json.loads(out) if out.strip() else []


def link(ns: str, name: str) -> dict[str, Any] | None:
    res = ns_exec(ns, "ip", "-j", "link", "show", "dev", name, check=False)
    if res.returncode != 0:
        return None
    items: list[dict[str, Any]] = json.loads(res.stdout)
    return items[0] if items else None


def links(ns: str) -> list[str]:
    return [str(item["ifname"]) for item in ip_json(ns, "link", "show")]


def routes(ns: str, *extra: str, v6: bool = False) -> list[dict[str, Any]]:
    fam = ("-6",) if v6 else ("-4",)
    result: list[dict[str, Any]] = ip_json(ns, *fam, "route", "show", *extra)
    return result


def addresses(ns: str, dev: str) -> list[str]:
    items = ip_json(ns, "addr", "show", "dev", dev)
    out: list[str] = []
    for item in items:
        for a in item.get("addr_info", []):
            if a.get("scope") != "link":
                out.append(f"{a['local']}/{a['prefixlen']}")
    return out


def sh(ns: str, *cmd: str) -> None:
    res = ns_exec(ns, *cmd, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} in {ns}: {res.stderr.strip()}")


def tun_config(settings: dict[str, Any], *outbounds: dict[str, Any], **top: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "log": {"loglevel": "warning", "access": "none"},
        "inbounds": [{"protocol": "tun", "tag": "tun-in", "settings": settings}],
        "outbounds": list(outbounds) or [{"protocol": "freedom", "tag": "direct"}],
        "policy": {"levels": {"0": {"handshake": 3, "connIdle": 30}}},
    }
    cfg.update(top)
    return cfg


def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kw)


# --- a real ``tunray run`` process -------------------------------------------------------------------


class TunrayProcess:
    """``tunray run -c CFG`` in namespace *ns*; stderr is collected line by line as it arrives."""

    def __init__(self, ns: str, cfg: str, *args: str, prefix: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 pass_fds: tuple[int, ...] = ()) -> None:
        import sys
        import threading
        from pathlib import Path

        tunray = str(Path(sys.executable).with_name("tunray"))
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *prefix, tunray, "run", "-c", cfg, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            pass_fds=pass_fds,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, needle: str, timeout: float = 15.0, start: int = 0) -> str:
        """The first stderr line (from index *start*) containing *needle*; fails if the process exits first."""
        import time

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in self.lines[start:]:
                if needle in line:
                    return line
            if self.proc.poll() is not None:
                self._reader.join(2)
                raise AssertionError(f"tunray exited ({self.proc.returncode}) before {needle!r}:\n{self.text}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {needle!r}:\n{self.text}")

    def wait(self, timeout: float = 15.0) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def as_unprivileged_python(scratch: str) -> tuple[str, ...]:
    """A command prefix giving a non-root child what a normal Debian host gives every user.

    Two differences of this test machine, fixed in a private mount namespace of the child
    only: the interpreter lives under ``/root`` (mode 0700), so ``/root`` is replaced by
    an empty world-readable tmpfs with the interpreter's prefix bind-mounted back at its
    own path; and ``/dev/net/tun`` is mode 0600 here (udev makes it 0666 on Debian), so a
    0666 node for the same device is bind-mounted over it.  Empty if neither applies.
    """
    import os
    import stat
    import sys

    steps: list[str] = []
    base = sys.base_prefix
    if base.startswith("/root/"):
        steps.append(
            f'mkdir -p "{scratch}/py" && mount --bind "{base}" "{scratch}/py" && '
            f'mount -t tmpfs -o mode=0755 tmpfs /root && mkdir -p "{base}" && mount --move "{scratch}/py" "{base}"'
        )
    if stat.S_IMODE(os.stat("/dev/net/tun").st_mode) & 0o006 != 0o006:
        steps.append(
            f'mkdir -p "{scratch}/dev" && mount -t tmpfs tmpfs "{scratch}/dev" && '
            f'mknod -m 0666 "{scratch}/dev/tun" c 10 200 && mount --bind "{scratch}/dev/tun" /dev/net/tun'
        )
    if not steps:
        return ()
    script = " && ".join(steps) + ' && exec "$@"'
    return ("unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh")


# --- raw packets into a TUN (what a hostile LAN device sends) ---------------------------------------


def inject_tcp(topo: Topology, tun: str, src: str, dst: str, sport: int, dport: int, flags: int,
               payload: bytes = b"") -> Any:
    """Send one IPv4 TCP segment into *tun* (AF_PACKET); returns a capture socket bound to the TUN first."""
    import socket

    from tunray.testing.stackclient import ETH_P_IP, TCP, ipv4, tcp

    with topo.enter(topo.client):
        cap = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
        cap.bind((tun, ETH_P_IP))
        out = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM)
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    out.sendto(ipv4(s, d, TCP, tcp(s, d, sport, dport, 1000, 0, flags, payload)), (tun, ETH_P_IP))
    out.close()
    return cap


async def tcp_answer(cap: Any, sport: int, timeout: float = 8.0) -> int:
    """TCP flags of the stack's first segment to port *sport* read off the TUN by *cap*."""
    cap.setblocking(False)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        while True:
            pkt = await loop.sock_recv(cap, 70000)
            if len(pkt) >= 40 and pkt[9] == 6 and int.from_bytes(pkt[22:24]) == sport:
                return int(pkt[33])


def syn_flood(topo: Topology, tun: str, host: str, count: int, port: int) -> None:
    """*count* SYNs from as many spoofed LAN sources into *tun* (AF_PACKET), as fast as we can."""
    import socket

    from tunray.testing.stackclient import ETH_P_IP, TCP, ipv4, tcp

    with topo.enter(topo.client):
        out = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM)
    dst = socket.inet_aton(host)
    with out:
        for i in range(count):
            src = bytes((10, 128 + (i >> 16 & 63), i >> 8 & 255, i & 255))
            out.sendto(ipv4(src, dst, TCP, tcp(src, dst, 40000 + i % 20000, port, i, 0, 0x02, b"")), (tun, ETH_P_IP))
