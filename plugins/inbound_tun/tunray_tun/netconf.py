"""Link configuration over rtnetlink (pyroute2), off the event loop.

Theory of operation.  pyroute2's ``IPRoute`` runs its own asyncio loop per thread and
its async variant cannot run on uvloop (no AF_NETLINK datagram transports), so every
netlink call goes to one dedicated worker thread that owns one ``IPRoute``.  That thread
is created by the first call, from the event-loop thread, so it inherits that thread's
network namespace (tests run a whole runtime inside ``Topology.enter``); the netlink
socket is opened there and stays in that namespace for its life.

:class:`LinkSetup` applies MTU, addresses, link up and routes, and remembers exactly
what it added so :meth:`LinkSetup.undo` removes only that, in reverse order.  Errors
on undo (the kernel already dropped a route with its link) are ignored.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import importlib
import importlib.util
import ipaddress
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from loguru import logger


def _defer_pyroute2_init() -> None:
    """Let ``pyroute2.iproute`` load without ``pyroute2/__init__.py`` running first.

    That ``__init__`` imports every pyroute2 module (NDB with sqlite3, IPDB, nftables,
    WireGuard, 9p, ...): ~10.5 MiB of RSS in every tunray process, of which ``IPRoute`` and
    ``NetlinkError`` need ~4.5 (``bench/bench_mem.py``).  The package module is registered
    without executing it; its module ``__getattr__`` (PEP 562) imports a submodule asked for
    by name (``from pyroute2 import config``, as pyroute2's own modules do) and runs the real
    ``__init__`` the first time anything asks the package for another name, so ``from
    pyroute2 import NDB`` elsewhere in the process still works.  Nothing happens if pyroute2
    is imported already.
    """
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None:
        return  # the import below fails with the usual message
    loader = spec.loader
    pkg = importlib.util.module_from_spec(spec)

    def full_init(name: str) -> Any:
        if not name.startswith("__") and importlib.util.find_spec(f"pyroute2.{name}") is not None:
            return importlib.import_module(f"pyroute2.{name}")  # "from pyroute2 import config"
        vars(pkg).pop("__getattr__", None)
        loader.exec_module(pkg)
        return getattr(pkg, name)

    vars(pkg)["__getattr__"] = full_init  # PEP 562: consulted for names the module lacks
    sys.modules["pyroute2"] = pkg


_defer_pyroute2_init()

from pyroute2.iproute.linux import IPRoute  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402

T = TypeVar("T")

RT_TABLE_MAIN = 254
RT_SCOPE_LINK = 253
RTN_UNICAST = 1
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
AF_INET = 2
AF_INET6 = 10

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class NetlinkWorker:
    """One thread, one ``IPRoute``; :meth:`call` runs ``fn(ipr, *args)`` there."""

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tunray-netlink")
        self._ipr: Any = None
        self._closed = False

    def _run(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        if self._ipr is None:
            self._ipr = IPRoute()
        return fn(self._ipr, *args)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise RuntimeError("netlink worker is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._run, fn, args)

    def _close_ipr(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._pool, self._close_ipr)
        finally:
            self._pool.shutdown(wait=False)


@contextlib.contextmanager
def sync_ipr() -> Iterator[Any]:
    """An ``IPRoute`` for the calling thread, where no event loop runs (the workers' supervisor)."""
    ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


# --- functions run on the worker thread ------------------------------------------------------------


def link_index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def link_exists(ipr: Any, index: int) -> bool:
    try:
        ipr.link("get", index=index)
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return False
        raise
    return True


def _route_args(net: Network, index: int) -> dict[str, Any]:
    args: dict[str, Any] = {
        "dst": str(net.network_address),
        "dst_len": net.prefixlen,
        "oif": index,
        "priority": 1,
        "table": RT_TABLE_MAIN,
    }
    if net.version == 6:
        args["family"] = AF_INET6
    else:
        args["scope"] = RT_SCOPE_LINK
    return args


def _addr_args(addr: Interface, index: int) -> dict[str, Any]:
    return {
        "index": index,
        "address": str(addr.ip),
        "prefixlen": addr.network.prefixlen,
        "family": AF_INET6 if addr.version == 6 else AF_INET,
    }


@dataclass
class LinkSetup:
    """What the inbound did to its link, so it can undo exactly that."""

    index: int
    addresses: list[Interface] = field(default_factory=list)
    routes: list[Network] = field(default_factory=list)

    def apply(self, ipr: Any, mtu: int, addresses: list[Interface], routes: list[Network]) -> None:
        ipr.link("set", index=self.index, mtu=mtu)
        for addr in addresses:
            try:
                ipr.addr("add", **_addr_args(addr, self.index))
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise OSError(exc.code, f"cannot add address {addr}: {exc}") from None
                continue  # already there (e.g. a persistent TUN): not ours to remove
            self.addresses.append(addr)
        ipr.link("set", index=self.index, state="up")
        for net in routes:
            try:
                ipr.route("add", **_route_args(net, self.index))
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise OSError(exc.code, f"cannot add route {net}: {exc}") from None
                continue
            self.routes.append(net)

    def undo(self, ipr: Any) -> None:
        for net in reversed(self.routes):
            try:
                ipr.route("del", **_route_args(net, self.index))
            except NetlinkError as exc:
                logger.debug("tun: route {} already gone: {}", net, exc)
        self.routes.clear()
        for addr in reversed(self.addresses):
            try:
                ipr.addr("del", **_addr_args(addr, self.index))
            except NetlinkError as exc:
                logger.debug("tun: address {} already gone: {}", addr, exc)
        self.addresses.clear()


def delete_link(ipr: Any, index: int) -> None:
    try:
        ipr.link("del", index=index)
    except NetlinkError as exc:
        if exc.code not in (errno.ENODEV, errno.ENOENT):
            raise


def set_down(ipr: Any, index: int) -> None:
    try:
        ipr.link("set", index=index, state="down")
    except NetlinkError as exc:
        if exc.code not in (errno.ENODEV, errno.ENOENT):
            raise
