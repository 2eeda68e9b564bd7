"""The published stack conformance suite: ``await check_stack(MyStack)`` (root only).

Theory of operation.  Every check builds a :class:`StackHarness`: a throwaway network
namespace holding a real TUN, with the stack under test attached to the TUN's fd in
*this* process.  The TUN is created in the root namespace (so we keep its fd), moved
into the namespace and configured there::

    TUN  10.77.0.1/24  fd77::1/64 (nodad)  default routes v4 and v6 through it

so the kernel inside the namespace is the app: anything it sends to 10.77.0.x,
fd77::x or any other address leaves through the TUN and is terminated by the stack.
The harness answers each flow in-process, choosing a behaviour by destination port
(``SINK``, ``SOURCE``, ``ECHO``, ...), while clients (:mod:`tunray.testing.stackclient`,
stdlib only) run inside the namespace through ``ip netns exec``.  Deleting the
namespace removes everything in it; the harness also kills its clients and closes
the stack and the TUN, in that order, whatever happened.

Only public contracts are used (:class:`~tunray.stack.Stack`, :class:`~tunray.stack.StackOptions`,
the links, :func:`~tunray.net.tun.open_tun`), so lwIP, ``system`` and later stacks run
the same suite unchanged.  Individual checks are public so suites can parametrize them;
:data:`CHECKS` lists those that take no size.

Capabilities.  :func:`check_stack` runs what the stack declares in ``capabilities``
(:class:`~tunray.stackcore.StackCapabilities`): TCP checks only for stacks that yield TCP
flows, UDP only for UDP, ICMP only with ``icmp_echo``, the lazy handshake only with
``lazy_handshake``.  Asking for something the stack does not declare (a lazy harness for a
stack that cannot hold a SYN, offload without vnet headers) is a :class:`CapabilityError`,
never a silent downgrade.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tunray.device import PacketDevice
from tunray.link import ByteLink, PacketLink
from tunray.net.address import Destination, Network
from tunray.net.tun import open_tun
from tunray.stack import Flow, Stack, StackOptions
from tunray.testing import stackclient
from tunray.testing.impair import ImpairedDevice as ImpairedDevice  # re-exported: its old home
from tunray.testing.netns import setns

SINK, SOURCE, ECHO, HALF, SERVER_HALF, REFUSE, DEFER, HOLD = 1000, 2000, 3000, 3001, 3002, 4000, 4001, 4002
LINK = 4003  # the link is accepted and handed to the test (``StackHarness.links``)
UDP_PORT, THIRD_PORT = 5000, 7777
TRAILER = b" (and this after your FIN)"
GREETING = b"my FIN comes now; keep talking"
DEFER_SECONDS = 0.6
V4_APP, V4_PEER, V4_FAR, V4_THIRD = "10.77.0.1", "10.77.0.2", "198.51.100.7", "203.0.113.9"
V6_APP, V6_PEER, V6_FAR, V6_THIRD = "fd77::1", "fd77::2", "2001:db8::7", "2001:db8:ffff::9"
DEFAULT_BULK_BYTES = 16 << 20
CLIENT = stackclient.__file__


class CapabilityError(ValueError):
    """A check or harness asked for something the stack does not declare it can do."""


def require(stack_cls: type[Stack], *, handshake: str = "eager", offload: bool = False,
            flow: Network | None = None, icmp: bool = False) -> None:
    """Raise :class:`CapabilityError` unless *stack_cls* declares what is asked for."""
    caps = stack_cls.capabilities
    name = stack_cls.__name__
    if handshake == "lazy" and not caps.lazy_handshake:
        raise CapabilityError(f"{name} cannot hold a SYN (capabilities.lazy_handshake is False): no lazy handshake")
    if offload and not caps.vnet_hdr:
        raise CapabilityError(f"{name} does not read virtio-net headers (capabilities.vnet_hdr is False): no offload")
    if flow is not None and flow not in caps.flows:
        raise CapabilityError(f"{name} yields no {flow} flows (capabilities.flows)")
    if icmp and not caps.icmp_echo:
        raise CapabilityError(f"{name} does not answer ICMP echo (capabilities.icmp_echo is False)")


def _ip(*args: str, stdin: str | None = None) -> None:
    proc = subprocess.run(["ip", *args], input=stdin, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")


class StackHarness:
    """A stack on a TUN in a namespace, answering flows by port; see the module docstring."""

    def __init__(self, stack: Stack, device: PacketDevice, ns: str, ifname: str) -> None:
        self.stack, self.device, self.ns, self.ifname = stack, device, ns, ifname
        self.flows: list[Flow] = []  # every flow the stack produced, in order
        self.udp_peers: dict[Destination, set[Destination]] = {}  # UDP flow source -> destinations seen
        self.errors: list[BaseException] = []  # unexpected handler failures
        self._results: dict[int, asyncio.Future[str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._procs: set[asyncio.subprocess.Process] = set()
        self._server: asyncio.Task[None] | None = None
        self.release = asyncio.Event()  # flows to ``HOLD`` wait for it before accept()
        self.links: asyncio.Queue[ByteLink] = asyncio.Queue()  # accepted flows to ``LINK``

    # --- clients ----------------------------------------------------------------------------------

    async def spawn(self, mode: str, *args: object) -> asyncio.subprocess.Process:
        """Start a client in the namespace with pipes on stdin, stdout and stderr."""
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", self.ns, sys.executable, "-S", CLIENT, mode, *map(str, args),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        self._procs.add(proc)
        return proc

    async def client(self, mode: str, *args: object, limit: float = 60.0) -> dict[str, Any]:
        """Run a client to completion and return its result (its last JSON line)."""
        proc = await self.spawn(mode, *args)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), limit)
        except TimeoutError:
            raise AssertionError(
                f"client {mode} {args} did not finish in {limit}s; stack counters {self.stack.counters}"
            ) from None
        finally:
            await self._reap(proc)
        if proc.returncode != 0:
            raise AssertionError(f"client {mode} {args} failed ({proc.returncode}): {err.decode()[-2000:]}")
        result: dict[str, Any] = json.loads(out.splitlines()[-1])
        return result

    async def _reap(self, proc: asyncio.subprocess.Process) -> None:
        self._procs.discard(proc)
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    # --- server side ------------------------------------------------------------------------------

    def result_for(self, port: int) -> asyncio.Future[str]:
        """What the ``SERVER_HALF`` handler received from the flow with source port *port* (SHA-256)."""
        if port not in self._results:
            self._results[port] = asyncio.get_running_loop().create_future()
        return self._results[port]

    def counted(self) -> int:
        return sum(self.stack.counters.values())

    def assert_healthy(self) -> None:
        if self.errors:
            raise AssertionError(f"a flow handler failed: {self.errors[0]!r}") from self.errors[0]

    async def _serve(self) -> None:
        async for flow in self.stack:
            self.flows.append(flow)
            task = asyncio.create_task(self._handle(flow))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, flow: Flow) -> None:
        link = flow.link
        try:
            if isinstance(link, PacketLink):
                await self._udp(flow, link)
                return
            port = flow.destination.port
            if port == REFUSE:
                link.abort()
                return
            if port == DEFER:
                await asyncio.sleep(DEFER_SECONDS)
            elif port == HOLD:
                await self.release.wait()
            await link.accept()
            if port == LINK:
                self.links.put_nowait(link)  # the test owns it now
                return
            if port == SINK:
                await _sink(link)
            elif port == SOURCE:
                await _source(link)
            elif port == SERVER_HALF:
                digest = await _server_half(link)
                fut = self.result_for(flow.source.port)
                if not fut.done():
                    fut.set_result(digest)
            else:
                await _echo(link, TRAILER if port == HALF else b"")
        except ConnectionError:
            link.abort()
        except asyncio.CancelledError:
            link.abort()
            raise
        except Exception as exc:  # reported by assert_healthy, with the flow
            exc.add_note(f"while serving {flow.network} {flow.source} -> {flow.destination}")
            self.errors.append(exc)
            link.abort()

    async def _udp(self, flow: Flow, link: PacketLink) -> None:
        peers = self.udp_peers.setdefault(flow.source, set())
        third = V6_THIRD if isinstance(flow.source.host, ipaddress.IPv6Address) else V4_THIRD
        link.send(b"unsolicited", Destination(Network.UDP, ipaddress.ip_address(third), THIRD_PORT))
        while (packet := await link.recv()) is not None:
            peers.add(packet.peer)
            link.send(packet.data + b" via " + str(packet.peer.host).encode(), packet.peer)

    async def _stop(self) -> None:
        errors: list[BaseException] = []
        for proc in list(self._procs):
            await self._reap(proc)
        try:
            await asyncio.wait_for(self.stack.aclose(), 10)
        except Exception as exc:
            errors.append(exc)
        tasks = [t for t in (self._server, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, Exception):
                errors.append(outcome)
        if errors:
            raise errors[0]


async def _sink(link: ByteLink) -> None:
    digest = hashlib.sha256()
    while data := await link.read(1 << 20):
        digest.update(data)
    await link.write(digest.hexdigest().encode())
    await link.aclose()


async def _source(link: ByteLink) -> None:
    head = b""
    while len(head) < 8:
        data = await link.read(8 - len(head))
        if not data:
            await link.aclose()
            return
        head += data
    size = int.from_bytes(head, "big")
    block = os.urandom(1048583)
    view = memoryview(block + block)
    digest = hashlib.sha256()
    pos = 0
    while size > 0:
        n = min(256 << 10, size)
        piece = view[pos:pos + n]
        digest.update(piece)
        await link.write(piece)
        pos = (pos + n) % len(block)
        size -= n
    await link.write(digest.hexdigest().encode())
    await link.write_eof()
    while await link.read():
        pass
    await link.aclose()


async def _echo(link: ByteLink, trailer: bytes) -> None:
    while data := await link.read():
        await link.write(data)
    if trailer:
        await link.write(trailer)  # after the app's FIN: a half-closed flow still receives
    await link.write_eof()
    await link.aclose()


async def _server_half(link: ByteLink) -> str:
    await link.write(GREETING)
    await link.write_eof()  # our FIN first; the app keeps sending
    digest = hashlib.sha256()
    while data := await link.read(1 << 20):
        digest.update(data)
    await link.aclose()
    return digest.hexdigest()


@contextlib.asynccontextmanager
async def stack_harness(
    stack_cls: type[Stack],
    *,
    mtu: int = 1500,
    offload: bool = False,
    handshake: str = "lazy",
    settings: Mapping[str, Any] | None = None,
    wrap: Callable[[PacketDevice], PacketDevice] | None = None,
    **options: Any,
) -> AsyncIterator[StackHarness]:
    """A running :class:`StackHarness`; everything is removed on exit, even on failure.

    *settings* go through the stack's own schema; *options* are further :class:`StackOptions`
    fields; *wrap* may put a device (such as :class:`~tunray.testing.impair.ImpairedDevice`)
    between TUN and stack.
    """
    require(stack_cls, handshake=handshake, offload=offload)
    parsed = stack_cls.settings_schema.parse(dict(settings or {}), "stack.settings")
    stack = stack_cls(StackOptions(mtu=mtu, handshake=handshake, settings=parsed, **options))
    ns = f"{_NS_PREFIX}{secrets.token_hex(4)}"
    device: PacketDevice | None = None
    harness: StackHarness | None = None
    _ip("netns", "add", ns)
    try:
        device, ifname = open_tun(offload=offload, mtu=mtu)
        _ip("link", "set", ifname, "netns", ns)
        _ip("-n", ns, "-batch", "-", stdin="\n".join((
            "link set lo up",
            f"link set {ifname} mtu {mtu} txqueuelen 1000",
            f"addr add {V4_APP}/24 dev {ifname}",
            f"addr add {V6_APP}/64 dev {ifname} nodad",
            f"link set {ifname} up",
            f"route add default dev {ifname}",
            f"route add ::/0 dev {ifname}",
        )) + "\n")
        if wrap is not None:
            device = wrap(device)
        harness = StackHarness(stack, device, ns, ifname)
        await stack.attach(device)
        harness._server = asyncio.create_task(harness._serve())
        yield harness
        harness.assert_healthy()
    finally:
        try:
            if harness is not None:
                await harness._stop()
            else:
                await stack.aclose()
        finally:
            if device is not None:
                device.close()
            _remove_namespace(ns)


def _remove_namespace(ns: str) -> None:
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)
    subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    if os.path.exists(f"/run/netns/{ns}"):
        raise RuntimeError(f"namespace {ns} could not be removed")


_NS_PREFIX = f"trstk-{os.getpid():x}-"


def namespaces_left() -> list[str]:
    """Namespaces made by this process's checks that still exist (should be none); other
    processes running the suite at the same time have their own prefix."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(_NS_PREFIX)]


# --- the checks -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Throughput:
    """What one bulk check measured at the client, in Gbit/s."""

    upload: float
    download: float


def _peer(family: int) -> str:
    if family not in (4, 6):
        raise ValueError(f"family must be 4 or 6, not {family}")
    return V4_PEER if family == 4 else V6_PEER


async def _bulk(h: StackHarness, host: str, size: int) -> Throughput:
    limit = 60 + size / (4 << 20)  # generous: 4 MiB/s worst case on a loaded CI box
    up = await h.client("upload", host, SINK, size, limit=limit)
    assert up["sent"] == up["reply"], f"upload of {size} bytes to {host} corrupted: {up}"
    down = await h.client("download", host, SOURCE, size, limit=limit)
    assert down["bytes"] == size, f"download from {host}: {down['bytes']} of {size} bytes"
    assert down["received"] == down["server"], f"download of {size} bytes from {host} corrupted"
    return Throughput(size * 8 / up["seconds"] / 1e9, size * 8 / down["seconds"] / 1e9)


async def check_bulk(stack_cls: type[Stack], *, family: int = 4, size: int = DEFAULT_BULK_BYTES,
                     **setup: Any) -> Throughput:
    """*size* bytes app -> stack and stack -> app over IPv4 or IPv6, SHA-256 checked at both ends."""
    require(stack_cls, flow=Network.TCP)
    async with stack_harness(stack_cls, **setup) as h:
        return await _bulk(h, _peer(family), size)


async def check_many_flows(stack_cls: type[Stack], *, flows: int = 200, **setup: Any) -> None:
    """*flows* TCP flows open at the same time, each echoing its own message."""
    require(stack_cls, flow=Network.TCP)
    async with stack_harness(stack_cls, **setup) as h:
        result = await h.client("many", V4_PEER, ECHO, flows, limit=60 + flows / 10)
        assert result == {"ok": flows, "n": flows}, f"only {result['ok']} of {flows} concurrent flows echoed"
        tcp = [f for f in h.flows if f.network is Network.TCP and f.destination.port == ECHO]
        assert len(tcp) == flows, f"the stack produced {len(tcp)} flows for {flows} connections"


async def check_udp_full_cone(stack_cls: type[Stack], **setup: Any) -> None:
    """One UDP socket, two destinations: one flow; replies carry each real source; a third source gets in."""
    require(stack_cls, flow=Network.UDP)
    async with stack_harness(stack_cls, **setup) as h:
        for app, near, far, third in ((V4_APP, V4_PEER, V4_FAR, V4_THIRD), (V6_APP, V6_PEER, V6_FAR, V6_THIRD)):
            result = await h.client("udp", UDP_PORT, f"{near},{far}", 3)
            got = {tuple(r) for r in result["replies"]}
            want = {(near, UDP_PORT, f"to {near} via {near}"), (far, UDP_PORT, f"to {far} via {far}"),
                    (third, THIRD_PORT, "unsolicited")}
            assert got == want, f"UDP replies {sorted(got)}, expected {sorted(want)}"
            mine = [src for src in h.udp_peers if (str(src.host), src.port) == (app, result["port"])]
            assert len(mine) == 1, f"{len(mine)} UDP flows for one app socket (expected one per source)"
            peers = {(str(d.host), d.port) for d in h.udp_peers[mine[0]]}
            assert peers == {(near, UDP_PORT), (far, UDP_PORT)}, f"the UDP flow saw destinations {peers}"


async def check_half_close(stack_cls: type[Stack], **setup: Any) -> None:
    """The app's FIN first (it still receives), then the stack's FIN first (the app still sends)."""
    require(stack_cls, flow=Network.TCP)
    async with stack_harness(stack_cls, **setup) as h:
        for host in (V4_PEER, V6_PEER):
            result = await h.client("halfclose", host, HALF)
            assert result["reply"] == "first half" + TRAILER.decode(), f"after the app's FIN: {result}"
            result = await h.client("serverhalf", host, SERVER_HALF, 1 << 20)
            assert result["greeting"] == GREETING.decode(), f"before the stack's FIN: {result}"
            got = await asyncio.wait_for(h.result_for(result["port"]), 10)
            assert got == result["sent"], "bytes the app sent after the stack's FIN were lost or changed"


async def check_lazy_handshake(stack_cls: type[Stack], **setup: Any) -> None:
    """Lazy: ``abort()`` before ``accept()`` refuses within 1 s; the SYN-ACK waits for ``accept()``."""
    setup["handshake"] = "lazy"
    require(stack_cls, flow=Network.TCP, handshake="lazy")
    async with stack_harness(stack_cls, **setup) as h:
        for host in (V4_PEER, V6_PEER):
            result = await h.client("connect", host, REFUSE)
            assert result["refused"], f"lazy abort() before accept() did not refuse the app: {result}"
            assert result["connect_seconds"] < 1.0, f"refusal took {result['connect_seconds']:.2f}s"
        result = await h.client("connect", V4_PEER, DEFER)
        assert not result["refused"] and result["echo"] == "sent before accept", result
        assert result["connect_seconds"] >= DEFER_SECONDS - 0.1, (
            f"lazy: the app connected after {result['connect_seconds']:.2f}s, before accept() "
            f"({DEFER_SECONDS}s)"
        )


async def check_eager_handshake(stack_cls: type[Stack], **setup: Any) -> None:
    """Eager: the app's connect succeeds while ``accept()`` is still held back; what it sent is kept."""
    setup["handshake"] = "eager"
    require(stack_cls, flow=Network.TCP)
    async with stack_harness(stack_cls, **setup) as h:
        for host in (V4_PEER, V6_PEER):
            h.release.clear()
            proc = await h.spawn("connect", host, HOLD, "hold")
            assert proc.stdin is not None and proc.stdout is not None
            try:
                first = await asyncio.wait_for(proc.stdout.readline(), 5)
            except TimeoutError:
                raise AssertionError(f"eager: the app's connect to {host} waited for accept()") from None
            assert first, f"eager: the client connecting to {host} died"
            assert "connected" in json.loads(first), first
            h.release.set()
            proc.stdin.write(b"go\n")
            out, err = await asyncio.wait_for(proc.communicate(), 10)
            assert proc.returncode == 0, err.decode()[-2000:]
            result = json.loads(out.splitlines()[-1])
            assert result["echo"] == "sent before accept", f"eager: data sent before accept(): {result}"


async def check_icmp_echo(stack_cls: type[Stack], **setup: Any) -> None:
    """Echo requests to any address behind the TUN are answered by the stack."""
    require(stack_cls, icmp=True)
    async with stack_harness(stack_cls, **setup) as h:
        for host in (V4_PEER, V4_FAR, V6_PEER, V6_FAR):
            result = await h.client("ping", host, 3)
            assert result["replies"] == 3, f"{result['replies']} of 3 pings to {host} answered"


async def inject_malformed(h: StackHarness, *, seed: int | None = None) -> dict[str, int]:
    """Inject malformed packets beside a live v4 and v6 echo flow; check both survive and the drops count.

    Returns how many were sent: ``{"crafted": n, "noise": m}`` (crafted ones must be dropped;
    the random noise must merely not hurt).
    """
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "big")
    proc = await h.spawn("inject", h.ifname, V4_PEER, V6_PEER, ECHO, seed)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr

    async def line() -> dict[str, Any]:
        raw = await asyncio.wait_for(stdout.readline(), 20)
        if not raw:
            err = await stderr.read()
            raise AssertionError(f"inject client (seed {seed}) died: {err.decode()[-2000:]}")
        out: dict[str, Any] = json.loads(raw)
        return out

    assert (await line()) == {"ready": True}
    before = h.counted()
    stdin.write(b"go\n")
    sent = await line()
    for _ in range(150):  # the stack reads the TUN asynchronously: up to 3 s
        if h.counted() - before >= sent["crafted"]:
            break
        await asyncio.sleep(0.02)
    delta = h.counted() - before
    assert delta >= sent["crafted"], (
        f"{sent['crafted']} malformed packets (+{sent['noise']} random, seed {seed}) raised the "
        f"stack's counters by only {delta}: {h.stack.counters}"
    )
    stdin.write(b"go\n")
    result = await line()
    await asyncio.wait_for(proc.wait(), 10)
    assert result == {"intact": [True, True]}, f"live flows damaged by malformed packets (seed {seed})"
    return {"crafted": sent["crafted"], "noise": sent["noise"]}


async def check_malformed(stack_cls: type[Stack], **setup: Any) -> None:
    """Garbage and truncated packets beside live v4 and v6 flows: dropped, counted, flows intact."""
    require(stack_cls, flow=Network.TCP)
    async with stack_harness(stack_cls, **setup) as h:
        await inject_malformed(h)
        ghosts = [f for f in h.flows if f.destination.port in (9998, 9999)]
        assert not ghosts, f"malformed packets opened flows: {ghosts}"


async def check_impaired(stack_cls: type[Stack], *, family: int = 4, size: int = 4 << 20, seed: int = 7,
                         **setup: Any) -> None:
    """2% loss, 1% duplication, 2% reordering both ways between TUN and stack: no byte lost or changed."""
    require(stack_cls, flow=Network.TCP)
    devices: list[ImpairedDevice] = []

    def wrap(device: PacketDevice) -> PacketDevice:
        devices.append(ImpairedDevice(device, seed=seed))
        return devices[-1]

    async with stack_harness(stack_cls, wrap=wrap, **setup) as h:
        await _bulk(h, _peer(family), size)
    stats = devices[0].stats
    assert stats["lost"] and stats["duplicated"] + stats["reordered"], f"the impairment never struck: {stats}"


def _app_socket(ns: str, family: int) -> socket.socket:
    """A non-blocking TCP socket created inside namespace *ns* (it stays there when used from here)."""
    result: list[socket.socket] = []

    def make() -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            setns(target)
            try:
                sock = socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                result.append(sock)
            finally:
                setns(own)
        finally:
            os.close(own)
            os.close(target)

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    return result[0]


async def check_link_stream(stack_cls: type[Stack], **setup: Any) -> None:
    """The stack's TCP link is a :class:`~tunray.bytestream.ByteStream`: ``check_byte_stream``
    with the kernel's socket in the namespace (the app) as the peer, through the real TUN."""
    from tunray.bytestream import ByteStream
    from tunray.net.stream import open_stream
    from tunray.testing.bytestream import check_byte_stream

    require(stack_cls, flow=Network.TCP)
    async with stack_harness(stack_cls, **setup) as h:

        @contextlib.asynccontextmanager
        async def pair() -> AsyncIterator[tuple[ByteStream, ByteStream]]:
            sock = _app_socket(h.ns, 4)
            try:
                await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (V4_PEER, LINK)), 10)
            except BaseException:
                sock.close()
                raise
            app = await open_stream(sock)
            link = await asyncio.wait_for(h.links.get(), 10)
            try:
                yield link, app
            finally:
                link.abort()
                app.abort()

        await check_byte_stream(pair, backpressure_limit=32 << 20)


CheckFn = Callable[..., Awaitable[Any]]
CHECKS: dict[str, CheckFn] = {  # (in the order check_stack runs them)
    "many_flows": check_many_flows,
    "udp_full_cone": check_udp_full_cone,
    "half_close": check_half_close,
    "lazy_handshake": check_lazy_handshake,
    "eager_handshake": check_eager_handshake,
    "icmp_echo": check_icmp_echo,
    "malformed": check_malformed,
    "impaired": check_impaired,
    "link_stream": check_link_stream,
}
"""The checks that need no size argument, by name (bulk is :func:`check_bulk`)."""


def applicable(stack_cls: type[Stack], name: str) -> bool:
    """Whether the check *name* (a :data:`CHECKS` key or ``"bulk"``) applies to what *stack_cls* declares."""
    caps = stack_cls.capabilities
    if name == "udp_full_cone":
        return Network.UDP in caps.flows
    if name == "icmp_echo":
        return caps.icmp_echo
    if name == "lazy_handshake" and not caps.lazy_handshake:
        return False
    return Network.TCP in caps.flows


async def check_stack(
    stack_cls: type[Stack],
    *,
    mtu: int = 1500,
    offload: bool = False,
    bulk_bytes: int = DEFAULT_BULK_BYTES,
    flows: int = 200,
    handshake: str | None = None,
    settings: Mapping[str, Any] | None = None,
) -> list[str]:
    """Run every check that applies to *stack_cls*; raise :class:`AssertionError` naming the first that fails.

    What applies follows ``stack_cls.capabilities`` (see the module docstring).  *handshake*
    is the mode for the traffic checks: by default ``"lazy"`` when the stack can hold a SYN,
    else ``"eager"``; asking for ``"lazy"`` from a stack that cannot is a :class:`CapabilityError`.
    The handshake checks run for every mode the stack declares.  Returns the names of the
    checks that ran.
    """
    caps = stack_cls.capabilities
    if handshake is None:
        handshake = "lazy" if caps.lazy_handshake else "eager"
    require(stack_cls, handshake=handshake, offload=offload)
    setup: dict[str, Any] = {"mtu": mtu, "offload": offload, "handshake": handshake, "settings": settings}
    runs: list[tuple[str, CheckFn, dict[str, Any]]] = []
    if applicable(stack_cls, "bulk"):
        runs += [
            ("bulk v4", check_bulk, {"family": 4, "size": bulk_bytes}),
            ("bulk v6", check_bulk, {"family": 6, "size": bulk_bytes}),
            ("many_flows", check_many_flows, {"flows": flows}),
            ("impaired", check_impaired, {"size": min(bulk_bytes, 4 << 20)}),
        ]
    runs += [(name, fn, {}) for name, fn in CHECKS.items()
             if name not in ("many_flows", "impaired") and applicable(stack_cls, name)]
    if not runs:
        raise CapabilityError(f"{stack_cls.__name__} declares no flows and no ICMP: nothing to check")
    for name, fn, kwargs in runs:
        try:
            await fn(stack_cls, **setup, **kwargs)
        except AssertionError as exc:
            exc.add_note(f"check_stack({stack_cls.__name__}, mtu={mtu}, offload={offload}): {name}")
            raise
    return [name for name, _fn, _kwargs in runs]
