"""``SystemStack`` (``"stack": "system"``) and ``MixedStack`` (``"stack": "mixed"``).

The core's :class:`~tunray.stackdriver.StackDriver` reads and writes the TUN in batches
and runs :class:`~tunray_stack_system.core.SystemCore`; this class adds the kernel side:
listeners on the TUN's own addresses (:mod:`tunray_stack_system.kernel`), one
:class:`~tunray_stack_system.link.KernelByteLink` per NATed connection, paired with the
socket the listener accepts by the NAT port of its peer.

MTU.  Without a user MTU the TUN inbound uses :attr:`SystemStack.default_mtu` = 65535 (as
sing-box does on Linux): every packet costs one read, one header rewrite and one write
whatever its size, so 64 KiB packets carry 45 times more bytes per unit of work than
1500-byte ones, and the kernel's TCP on both sides of the NAT segments and checksums (in
hardware-free software, but in C) as it would for loopback.

The read loop.  On a real TUN the packets of known entries never reach Python: the C
loop of :mod:`tunray_stack_system.fastpath` reads, rewrites and writes them back, and
returns the first packet it declines (a SYN, an unknown flow, anything unusual) to
:meth:`SystemStack._pump`, which hands it to the core's general path.  Elsewhere (and
without the extension) :meth:`SystemStack._on_readable` does the same in Python.

``mixed``: TCP as ``system``; UDP and ICMP by the Python stack's core (sing-box's
``mixed`` pairs its system TCP with gVisor's UDP).  The Python stack is looked up by name
in the registry the TUN inbound hands over (:attr:`~tunray.stack.StackOptions.stacks`),
so this plugin depends on the core's contracts only.
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import socket
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from loguru import logger
from tunray.config.errors import ConfigError
from tunray.device import DeviceError, FdDevice, PacketDevice
from tunray.net.address import Destination, IPAddress, Network
from tunray.net.listen import OUT_OF_RESOURCES, pause_accepting
from tunray.stack import Flow, StackOptions
from tunray.stackcore import CoreEvent, StackCapabilities, StackCore, TcpOpened, TcpReset
from tunray.stackdriver import READ_BATCH, StackDriver, _ip

from tunray_stack_system.core import SystemConfig, SystemCore
from tunray_stack_system.fastpath import EOF, ERROR, SLOW, WRITE, FastTable
from tunray_stack_system.kernel import Interface, open_listeners, usable
from tunray_stack_system.link import KernelByteLink, reset_close
from tunray_stack_system.nat import Side

ACCEPT_BATCH = 64
EMFILE_BACKOFF = 0.1
FDS_PER_FLOW = 2  # the socket the listener accepted and the outbound's
FDS_SPARE = 256  # the TUN, listeners, DNS and log files, a few dials in progress
SOURCES_CACHED = 1024  # app addresses kept as ipaddress objects (cleared when full)
READ_SIZE = 65536 + 64  # a 64 KiB (super-)packet and its virtio header


class SystemStack(StackDriver):
    name: ClassVar[str] = "system"
    capabilities: ClassVar[StackCapabilities] = StackCapabilities(
        lazy_handshake=True, icmp_echo=True, vnet_hdr=True, tso=False, half_open_budget=True,
    )
    default_mtu: ClassVar[int | None] = 65535

    def __init__(self, options: StackOptions) -> None:
        super().__init__(options)
        self._sides: dict[int, Side] = {}
        self._listeners: dict[int, socket.socket] = {}
        self._nat_links: dict[int, KernelByteLink] = {}  # handle -> link, until paired with its socket
        self._live: set[KernelByteLink] = set()  # paired links (reset by aclose)
        # links waiting for their socket -> when they give up; in that order (one timeout for all)
        self._waiting: dict[KernelByteLink, float] = {}
        self._sources: dict[bytes, IPAddress] = {}  # the apps' addresses, as a flow's source wants them
        self._wait_timer: asyncio.TimerHandle | None = None
        self._syscore: SystemCore | None = None
        self._rbuf = bytearray(READ_SIZE)  # every packet is read into this one buffer (see _on_readable)
        self._rview = memoryview(self._rbuf)

    @classmethod
    def check_link(cls, gateway: Sequence[Interface], path: str) -> None:
        """The TUN needs an address whose prefix holds a second one (the NATed client)."""
        if not gateway:
            raise ConfigError(path, f"stack {cls.name!r} needs an address on the TUN whose prefix holds at least "
                                    "two addresses (e.g. \"10.0.0.1/30\"): the listener's and the NATed client's")
        found = usable(gateway)
        for i, iface in enumerate(gateway):
            if iface.version not in found:
                raise ConfigError(f"{path}[{i}]",
                                  f"{iface} leaves no second address in its prefix for stack {cls.name!r} "
                                  "(the NATed client needs one; use a shorter prefix such as /30 or /126)")

    def make_inner(self, vnet_hdr: bool) -> StackCore | None:
        """The core for UDP and ICMP; None: this stack's own (:class:`tunray.stackudp.UdpTable` and ICMP echo)."""
        return None

    def make_core(self, vnet_hdr: bool) -> SystemCore:
        o = self.options
        config = SystemConfig(
            mtu=o.mtu, vnet_hdr=vnet_hdr, eager=o.handshake == "eager", tcp_idle_timeout=o.tcp_idle_timeout,
            udp_idle_timeout=o.udp_idle_timeout, udp_queue_packets=o.udp_queue_packets, max_flows=o.max_flows,
            max_half_open=o.max_half_open, max_half_open_per_source=o.max_half_open_per_source,
            handshake_timeout=o.handshake_timeout,
        )
        self._syscore = SystemCore(config, self._sides, self.make_inner(vnet_hdr))
        return self._syscore

    async def attach(self, device: PacketDevice) -> None:
        fd_budget(self.name, self.options.max_flows)
        self._sides, self._listeners = open_listeners(device.fileno(), self.options.queue)
        try:
            await super().attach(device)
        except BaseException:
            self._close_listeners()
            raise
        core = self._syscore
        if type(device) is FdDevice and core is not None and self.core is core:
            core.use_c(self._rbuf)  # None without the extension: the Python fast path below
        assert self.loop is not None
        for version, sock in self._listeners.items():
            self.loop.add_reader(sock.fileno(), self._on_accept, sock, version)

    # --- the device side -------------------------------------------------------------------------

    def _on_readable(self) -> None:
        """Read packets into one reused buffer, rewrite the common ones in place, write them back
        (in C when the core has its fast path: :meth:`_pump`).

        The driver's own loop reads each packet into a new ``bytes`` and the NAT writes a
        rewritten copy: two fresh 64 KiB buffers per big packet, whose pages the kernel
        must fault in and clear (glibc hands the freed memory back each time).  That was
        ~20 % of the proxy's CPU in an MTU 65535 iperf3 upload (``perf``: ``exc_page_fault``
        under the TUN read's copy).  Here a packet the NAT rewrites in place
        (:meth:`~tunray_stack_system.core.SystemCore.feed_into`) is written straight back;
        anything else is fed as a copy, and what that produced is written before the next
        packet is read, so every flow's packets leave in the order they came.
        """
        device, core = self._device, self._syscore
        if type(device) is not FdDevice or core is None or self.core is not core:
            super()._on_readable()
            return
        if core.fast is not None:
            self._pump(device, core, core.fast)
            return
        assert self.loop is not None
        now = self.loop.time()
        fd = device.fileno()
        rbuf, view = self._rbuf, self._rview
        bufs = [rbuf]
        readv, fast, write, os_write = os.readv, core.feed_into, device.write, os.write
        try:
            for _ in range(READ_BATCH):
                try:
                    n = readv(fd, bufs)
                except (BlockingIOError, InterruptedError):
                    break
                if not n:
                    raise DeviceError(errno.ENODEV, f"reading {device.name}: end of file")
                if fast(rbuf, n, now):
                    try:
                        os_write(fd, view[:n])  # device.write's syscall, without its frame per packet
                    except OSError:
                        write(view[:n])  # once more by the device, which counts a drop or raises DeviceError
                    continue
                _slow(core, bytes(view[:n]), now, write)
        except DeviceError as exc:
            self._fail(exc)
            return
        except OSError as exc:  # not "would block": the device is gone
            self._fail(DeviceError(exc.errno, f"reading {device.name}: {exc.strerror}"))
            return
        self._flush()

    def _pump(self, device: FdDevice, core: SystemCore, fast: FastTable) -> None:
        """:meth:`_on_readable` with the C fast path: C reads, rewrites and writes back the packets
        of known entries and stops at the first it declines, which Python handles here as
        :meth:`_on_readable` does; the notes C left (FINs, RSTs, handshake ACKs) are applied
        to the table before that packet (:mod:`tunray_stack_system.fastpath`)."""
        assert self.loop is not None
        now = self.loop.time()
        fd = device.fileno()
        view = self._rview
        pump, write = fast.pump, device.write
        budget = READ_BATCH
        try:
            while budget > 0:
                code, done, n, notes = pump(fd, budget, now)
                budget -= done
                if notes:
                    core.apply_notes(now)
                if code == SLOW:
                    _slow(core, bytes(view[:n]), now, write)
                elif code == WRITE:
                    write(view[:n])  # once more by the device, which counts a drop or raises DeviceError
                elif code == EOF:
                    raise DeviceError(errno.ENODEV, f"reading {device.name}: end of file")
                elif code == ERROR:
                    raise DeviceError(fast.errno, f"reading {device.name}: {os.strerror(fast.errno)}")
                else:  # AGAIN, BATCH
                    break
        except DeviceError as exc:
            self._fail(exc)
            return
        self._flush()

    # --- the kernel side --------------------------------------------------------------------------

    def _on_accept(self, lsock: socket.socket, version: int) -> None:
        core = self._syscore
        if core is None:
            return
        nat = core.nat
        family = lsock.family.value  # socket.accept() converts both to enums again for every socket
        for _ in range(ACCEPT_BATCH):
            try:
                fd, peer = lsock._accept()  # type: ignore[attr-defined]
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in OUT_OF_RESOURCES:
                    self.count("tcp_accept_backoff")
                    self._back_off(lsock, version)
                    return
                self.count("tcp_accept_error")
                continue
            sock = socket.socket(family, socket.SOCK_STREAM, 0, fd)
            sock.setblocking(False)
            entry = nat.lookup_port(version, peer[1])
            link = self._nat_links.pop(entry.handle, None) if entry is not None else None
            if link is None:
                self.count("tcp_orphan_accept")
                reset_close(sock)
                continue
            link._attach(sock)

    def _back_off(self, lsock: socket.socket, version: int) -> None:
        """Out of fds: stop accepting for a moment instead of spinning (the backlog keeps the SYNs)."""
        assert self.loop is not None
        pause_accepting(self.loop, lsock, EMFILE_BACKOFF, lambda: not self._closed, self._on_accept, lsock, version)

    def _dispatch(self, evs: Any) -> None:
        rest: list[CoreEvent] = []
        for ev in evs:
            kind = type(ev)
            if kind is TcpOpened and ev.handle < 0:
                link = KernelByteLink(self, ev.handle, not ev.pending)
                self._nat_links[ev.handle] = link
                src = self._sources.get(ev.src_ip)
                if src is None:  # a handful of apps open every flow: their addresses are made once
                    if len(self._sources) >= SOURCES_CACHED:
                        self._sources.clear()
                    src = self._sources[ev.src_ip] = _ip(ev.src_ip)
                self._push(Flow(Network.TCP, Destination(Network.TCP, src, ev.src_port),
                                Destination(Network.TCP, _ip(ev.dst_ip), ev.dst_port), link))
            elif kind is TcpReset and ev.handle < 0:
                ended = self._nat_links.pop(ev.handle, None)
                if ended is not None:
                    ended._ended()
            else:
                rest.append(ev)
        if rest:
            super()._dispatch(rest)

    # --- called by links ----------------------------------------------------------------------------

    def release_syn(self, handle: int) -> None:
        """Let the flow's held SYN through: written to the device now, not on the next flush."""
        core, device = self._syscore, self._device
        if core is None or self.core is not core or self._closed or device is None:
            return
        syn = core.release_syn(handle)
        if syn is not None:
            try:
                device.write(syn)
            except OSError as exc:
                self._fail(exc)

    def refuse(self, handle: int) -> None:
        """The flow was aborted before its socket came: RST a held SYN; a later socket is reset too."""
        if self.core is not None and not self._closed:
            core = self._syscore
            assert core is not None
            entry = core.nat.by_handle.get(handle)
            if entry is not None and entry.pending:
                self._nat_links.pop(handle, None)
                core.tcp_abort(handle, self.time())
                self.kick()

    def wait_socket(self, link: KernelByteLink) -> None:
        """Wake *link* (:meth:`KernelByteLink._timed_out`) if its socket has not come in handshake_timeout.

        One timer for every waiting link instead of one per flow: the timeout is the same for
        all, so the dict's insertion order is the order they give up in.
        """
        assert self.loop is not None
        deadline = self.loop.time() + self.options.handshake_timeout
        self._waiting[link] = deadline
        if self._wait_timer is None:
            self._wait_timer = self.loop.call_at(deadline, self._wait_expired)

    def stop_waiting(self, link: KernelByteLink) -> None:
        self._waiting.pop(link, None)

    def _wait_expired(self) -> None:
        self._wait_timer = None
        assert self.loop is not None
        now = self.loop.time()
        waiting = self._waiting
        while waiting:
            link, deadline = next(iter(waiting.items()))
            if deadline > now:
                self._wait_timer = self.loop.call_at(deadline, self._wait_expired)
                return
            del waiting[link]
            link._timed_out()

    def track(self, link: KernelByteLink) -> None:
        self._live.add(link)

    def untrack(self, link: KernelByteLink) -> None:
        self._live.discard(link)

    # --- lifecycle ------------------------------------------------------------------------------------

    def _close_listeners(self) -> None:
        for sock in self._listeners.values():
            if self.loop is not None and sock.fileno() >= 0:
                self.loop.remove_reader(sock.fileno())
            sock.close()
        self._listeners = {}

    async def aclose(self) -> None:
        if self._closed:
            return
        self._close_listeners()
        if self._wait_timer is not None:
            self._wait_timer.cancel()
            self._wait_timer = None
        for link in list(self._nat_links.values()) + list(self._live):
            link.abort()
        self._nat_links.clear()
        self._live.clear()
        await super().aclose()

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out["tcp_paired"] = len(self._live)
        core = self._syscore
        if core is not None and core.fast is not None:
            out["tcp_c_packets"] = core.fast.count  # packets the C fast path read (declined ones too)
        return out


def _slow(core: SystemCore, packet: bytes, now: float, write: Callable[[bytes], object]) -> None:
    """A packet the fast path declined: the core's general path, and what it produced written at once."""
    core.feed_slow(packet, now)
    out = core.out
    if out:
        for p in out:
            write(p)
        out.clear()


def fd_budget(name: str, max_flows: int) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` towards what *max_flows* TCP flows need; return the flows it holds.

    Every NATed flow holds :data:`FDS_PER_FLOW` descriptors for its whole life (Go
    programs such as sing-box lift the soft limit to the hard one at start for the same
    reason).  When even the hard limit is short, log one line saying how many flows fit:
    past that, a new flow's dial fails with EMFILE and its held SYN is refused with RST.
    """
    need = max_flows * FDS_PER_FLOW + FDS_SPARE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need and soft != hard:
        want = need if hard == resource.RLIM_INFINITY else min(hard, need)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    fits = max(0, (soft - FDS_SPARE) // FDS_PER_FLOW) if soft != resource.RLIM_INFINITY else max_flows
    if fits < max_flows:
        logger.warning("stack {}: RLIMIT_NOFILE (hard limit {}) holds about {} TCP flows at {} descriptors each, "
                       "fewer than maxFlows {}; raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) or use "
                       "more workers", name, hard, fits, FDS_PER_FLOW, max_flows)
    return fits


class MixedStack(SystemStack):
    """System TCP; UDP and ICMP by the Python stack's core (see the module docstring)."""

    name: ClassVar[str] = "mixed"

    def make_inner(self, vnet_hdr: bool) -> StackCore | None:
        stacks = self.options.stacks or _registry_stacks()
        python = stacks.get("python")
        if python is None or not issubclass(python, StackDriver):
            raise RuntimeError('stack "mixed" needs the "python" stack plugin (tunray-stack-python) for UDP')
        inner = python(StackOptions(**{**_fields(self.options), "settings": python.settings_schema.parse({}, "")}))
        assert isinstance(inner, StackDriver)
        return inner.make_core(vnet_hdr)


def _fields(options: StackOptions) -> dict[str, Any]:
    return {name: getattr(options, name) for name in StackOptions.__dataclass_fields__}


def _registry_stacks() -> dict[str, Any]:
    """The installed stacks, for a ``mixed`` stack built without the inbound's registry (tests, benches)."""
    from tunray.plugin.manager import PluginManager

    stacks: dict[str, Any] = PluginManager().registry.stacks
    return stacks
