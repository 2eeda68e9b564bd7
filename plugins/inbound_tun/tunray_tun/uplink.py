"""``autoOutboundsInterface``: keep the process's own sockets out of the TUN.

Theory of operation.  :class:`UplinkBinder` adds one *controller* to the runtime's
:class:`~tunray.net.dialer.Dialer`; the dialer calls it for every outbound socket
before ``connect`` (and skips it when ``sockopt.interface`` is set).  The controller
``SO_BINDTODEVICE``s the socket to the uplink, except for loopback destinations
(binding those to a physical interface breaks them).

With a fixed name the uplink never changes.  With ``"auto"`` the uplink is the
interface of the lowest-metric default route in the main table, IPv4 first and IPv6
only if IPv4 has none, skipping the TUN itself, links that are down, loopback links
and multipath routes without a single output interface.  A raw rtnetlink socket
subscribed to link and route groups sits on the event loop (``add_reader``); any
message marks the choice dirty and one re-detection task (on the netlink worker)
runs until it is clean again, so a burst of route changes costs one or two dumps.
If nothing qualifies, sockets are left unbound and a warning is logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from typing import Any

from loguru import logger
from tunray.net.address import IPAddress
from tunray.net.dialer import Dialer
from tunray.net.sockopt import bind_to_device

from tunray_tun.netconf import (
    AF_INET,
    AF_INET6,
    IFF_LOOPBACK,
    IFF_UP,
    RT_TABLE_MAIN,
    RTN_UNICAST,
    NetlinkWorker,
)

RTMGRP_LINK = 0x1
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_ROUTE = 0x400
NETLINK_ROUTE = 0


def detect_uplink(ipr: Any, exclude_index: int | None) -> str | None:
    """Name of the lowest-metric usable default route's interface (runs on the worker)."""
    links: dict[int, tuple[str, int]] = {}
    for link in ipr.get_links():
        links[int(link["index"])] = (str(link.get("ifname")), int(link["flags"]))
    for family in (AF_INET, AF_INET6):
        best: tuple[int, str] | None = None
        for route in ipr.route("dump", family=family):
            if route["dst_len"] != 0 or route.get("table") != RT_TABLE_MAIN or route["type"] != RTN_UNICAST:
                continue
            oif = route.get("oif")
            if not oif or oif == exclude_index or oif not in links:
                continue
            name, flags = links[oif]
            if not flags & IFF_UP or flags & IFF_LOOPBACK:
                continue
            metric = route.get("priority") or 0
            if best is None or metric < best[0]:
                best = (metric, name)
        if best is not None:
            return best[1]
    return None


def _is_loopback(ip: IPAddress) -> bool:
    if ip.is_loopback:
        return True
    mapped = getattr(ip, "ipv4_mapped", None)
    return isinstance(mapped, ipaddress.IPv4Address) and mapped.is_loopback


class UplinkBinder:
    """Binds every outbound socket to the uplink; see the module docstring."""

    def __init__(self, mode: str, dialer: Dialer, worker: NetlinkWorker | None, tun_index: int | None) -> None:
        """*worker* runs the detection dumps; only ``"auto"`` needs one."""
        self.mode = mode
        self.dialer = dialer
        self.worker = worker
        self.tun_index = tun_index
        self.current: str | None = None if mode == "auto" else mode
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dirty = False
        self._task: asyncio.Task[None] | None = None
        self._warned = False
        self._installed = False

    def control(self, sock: socket.socket, ip: IPAddress) -> None:
        """The dialer controller: called for each new outbound socket before connect."""
        name = self.current
        if name is None or _is_loopback(ip):
            return
        bind_to_device(sock, name)

    async def start(self) -> None:
        if self.mode == "auto":
            self._loop = asyncio.get_running_loop()
            sock = socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, NETLINK_ROUTE
            )
            try:
                sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE))
            except OSError:
                sock.close()
                raise
            self._sock = sock
            self._loop.add_reader(sock.fileno(), self._on_netlink)
            await self._detect_once()
        self.dialer.controllers.append(self.control)
        self._installed = True

    async def _detect_once(self) -> None:
        if self.worker is None:
            raise RuntimeError("uplink detection needs a netlink worker")
        name = await self.worker.call(detect_uplink, self.tun_index)
        if name != self.current:
            if name is None:
                logger.warning("tun: no uplink interface found; outbound sockets are left unbound")
            else:
                logger.info("tun: outbound sockets bind to {}", name)
        self.current = name

    def _on_netlink(self) -> None:
        assert self._sock is not None
        while True:
            try:
                if not self._sock.recv(65536):
                    break
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # ENOBUFS: we lost messages; a dump resyncs anyway
                logger.debug("tun: netlink monitor: {}", exc)
                break
        self._dirty = True
        if self._task is None or self._task.done():
            assert self._loop is not None
            self._task = self._loop.create_task(self._redetect())

    async def _redetect(self) -> None:
        while self._dirty:
            self._dirty = False
            try:
                await self._detect_once()
            except RuntimeError:  # worker closed during shutdown
                return
            except OSError as exc:
                logger.warning("tun: uplink detection failed: {}", exc)

    async def stop(self) -> None:
        if self._installed:
            with contextlib.suppress(ValueError):
                self.dialer.controllers.remove(self.control)
            self._installed = False
        if self._sock is not None:
            assert self._loop is not None
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
