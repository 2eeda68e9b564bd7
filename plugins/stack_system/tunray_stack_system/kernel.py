"""The kernel side of the ``system`` stack: the TUN's addresses and the listeners on them.

The listeners must live in the TUN's network namespace, which need not be ours (the
conformance harness moves the TUN into a throwaway namespace; a TUN handed over with
``XRAY_TUN_FD`` may live anywhere).  ``TUNGETDEVNETNS`` (Linux 5.2) returns a handle on
the device's namespace; a short-lived thread enters it with ``setns(2)`` (which changes
only the calling thread), reads the link's addresses over rtnetlink and opens the
listening sockets there.  Sockets keep the namespace they were made in, so the event loop
thread uses them as usual afterwards.

Addressing (sing-tun's): per family, the first address on the TUN whose prefix holds
another usable address; that other one (the next, else the previous) is the fake client
the kernel sees.  The listener takes a random port on the TUN's own address.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import fcntl
import ipaddress
import os
import socket
import struct
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from tunray.net.steering import queue_for

from tunray_stack_system.nat import Side

T = TypeVar("T")
TUNGETIFF = 0x800454D2
TUNGETDEVNETNS = 0x54E3  # _IO('T', 227)
CLONE_NEWNET = 0x40000000
IP_FREEBIND = 15
IPV6_FREEBIND = 78
BACKLOG = 65535  # the kernel caps it at net.core.somaxconn

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def next_address(iface: Interface) -> Address | None:
    """Another usable address in *iface*'s prefix (the next one, else the previous), or None."""
    net = iface.network
    for step in (1, -1):
        try:
            cand = iface.ip + step
        except ipaddress.AddressValueError:
            continue
        if cand not in net:
            continue
        if iface.version == 4 and net.prefixlen < 31 and cand in (net.network_address, net.broadcast_address):
            continue
        return cand
    return None


def usable(ifaces: Iterable[Interface]) -> dict[int, tuple[Interface, Address]]:
    """Per IP version, the first address with a fake-client partner, and that partner."""
    out: dict[int, tuple[Interface, Address]] = {}
    for iface in ifaces:
        if iface.version in out or (iface.version == 6 and iface.ip.is_link_local):
            continue
        peer = next_address(iface)
        if peer is not None:
            out[iface.version] = (iface, peer)
    return out


def ifname_of(fd: int) -> str:
    result = fcntl.ioctl(fd, TUNGETIFF, struct.pack("16sH22x", b"", 0))
    return result[:16].rstrip(b"\0").decode()


def _netns_fd(fd: int) -> int | None:
    """A new fd on the TUN's namespace if it is not ours, else None."""
    try:
        nsfd = fcntl.ioctl(fd, TUNGETDEVNETNS)
    except OSError:
        return None  # not a TUN (a test device) or an old kernel: assume ours
    if os.fstat(nsfd).st_ino == os.stat("/proc/thread-self/ns/net").st_ino:
        os.close(nsfd)
        return None
    return nsfd


def _run_in(nsfd: int | None, fn: Callable[[], T]) -> T:
    """Run *fn* in a fresh thread, in the namespace *nsfd* (None: the calling thread's).

    A thread because pyroute2 runs an event loop of its own, which cannot nest in ours; a
    fresh one because it inherits the calling thread's namespace, or ends in another one
    and must never be reused.
    """

    def enter() -> T:
        if nsfd is not None:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(nsfd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns into the TUN's namespace: {os.strerror(err)}")
        return fn()

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tunray-netns") as pool:
        return pool.submit(enter).result()


def link_addresses(ifname: str) -> list[Interface]:
    """The addresses on *ifname* (in the calling thread's namespace), over rtnetlink."""
    from pyroute2 import IPRoute  # imported here: only the system stack needs it at attach

    out: list[Interface] = []
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=ifname)
        if not index:
            return out
        for msg in ipr.get_addr(index=index[0]):
            addr: Any = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if addr:
                out.append(ipaddress.ip_interface(f"{addr}/{msg['prefixlen']}"))
    return out


def listen(address: Address, queue: tuple[int, int] | None = None) -> socket.socket:
    """A listener on *address*, on a port the TUN steers to *queue* ``(index, count)`` if given.

    With worker processes the kernel's replies from ``address:port`` must come back to the
    worker that owns this listener; the steering program picks the queue from the source
    endpoint (:func:`tunray.net.steering.queue_for`), so try random ports until one maps here.
    """
    for _ in range(64 * (queue[1] if queue else 1)):
        sock = _listen_once(address)
        if queue is None or queue_for(address.packed, sock.getsockname()[1], queue[1]) == queue[0]:
            return sock
        sock.close()
    raise OSError(0, f"no listen port on {address} steers to TUN queue {queue}")


def _listen_once(address: Address) -> socket.socket:
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accepted sockets inherit it: no Nagle delay towards the app (a transport used to set it per socket)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)  # before DAD completes, as sing-tun retries
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.bind((str(address), 0))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def open_listeners(fd: int, queue: tuple[int, int] | None = None) -> tuple[dict[int, Side], dict[int, socket.socket]]:
    """Find the TUN's addresses and listen on them, in the TUN's namespace.

    Raises :class:`OSError` when no family has an address with a partner in its prefix.
    """
    name = ifname_of(fd)

    def work() -> tuple[dict[int, Side], dict[int, socket.socket]]:
        pairs = usable(link_addresses(name))
        if not pairs:
            raise OSError(0, f"TUN {name} has no address whose prefix holds a second one: the system stack "
                             "needs e.g. 10.0.0.1/30 (the listener) and 10.0.0.2 (the NATed client)")
        sides: dict[int, Side] = {}
        socks: dict[int, socket.socket] = {}
        try:
            for version, (iface, peer) in pairs.items():
                sock = listen(iface.ip, queue)
                socks[version] = sock
                sides[version] = Side(iface.ip.packed, peer.packed, sock.getsockname()[1])
        except BaseException:
            for s in socks.values():
                s.close()
            raise
        return sides, socks

    nsfd = _netns_fd(fd)
    try:
        return _run_in(nsfd, work)
    finally:
        if nsfd is not None:
            os.close(nsfd)
