"""Listening sockets for inbounds, with Xray's ``listen``/``port`` rules.

* ``listen`` is an IP address (default: every address, dual-stack like Go's wildcard
  listener), or a Unix socket: an absolute path (optionally ``",0666"`` for its mode),
  ``"@name"`` (abstract) or ``"@@name"`` (abstract, padded as Xray pads it for
  compatibility with other tools).  ``port`` is ignored for Unix sockets.
* ``port`` is a port list (``1080``, ``"1080"``, ``"1080-1082"``): one socket per port.

:class:`StreamServer` accepts on such sockets and runs ``handler(stream, sock)`` per
connection on its own task (the flow's ``dispatch_link`` runs in it, so the dispatcher's
drain sees it); ``stop_accepting`` closes the listeners, ``aclose`` also cancels the tasks.
The server accepts from a readiness callback (no asyncio server or transport): each
connection is a :class:`~tunray.net.stream.SocketStream`.  Running out of descriptors
(EMFILE and the like) pauses accepting for :data:`ACCEPT_BACKOFF` and logs once, so a
burst of connections never kills the inbound.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import os
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from loguru import logger

from tunray.config.errors import ConfigError
from tunray.net.address import Destination, Host, Network, parse_host
from tunray.net.stream import DEFAULT_HIGH_WATER, SocketStream
from tunray.routing.ports import PortList

IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IPV6_TRANSPARENT = 75
IP_RECVORIGDSTADDR = getattr(socket, "IP_RECVORIGDSTADDR", 20)
IPV6_RECVORIGDSTADDR = 74


@dataclass(frozen=True)
class ListenAddress:
    """Where to listen: ``unix`` set for a Unix socket, else ``host``/``ports``."""

    host: str
    ports: tuple[int, ...]
    unix: str = ""
    mode: int | None = None

    @classmethod
    def parse(cls, listen: str, port: object, path: str, *, port_required: bool = True) -> ListenAddress:
        """Parse an inbound's ``listen``/``port``; *path* is the inbound's JSON path."""
        if listen.startswith(("/", "@")):
            name, _, mode = listen.partition(",")
            try:
                mode_value = int(mode, 8) if mode else None
            except ValueError:
                raise ConfigError(f"{path}.listen", f"bad Unix socket mode {mode!r} (expected octal like 0666)") from None
            return cls("", (), unix=name, mode=mode_value)
        host = listen or "0.0.0.0"
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"{path}.listen", f"{listen!r} is not an IP address or a Unix socket path") from None
        if port is None:
            if port_required:
                raise ConfigError(f"{path}.port", "is required for this protocol")
            return cls(host, ())
        plist = PortList.parse(port, f"{path}.port")
        ports = tuple(p for lo, hi in plist.ranges() for p in range(lo, hi + 1))
        if len(ports) > 1024:
            raise ConfigError(f"{path}.port", f"{len(ports)} ports: at most 1024 listening ports per inbound")
        return cls(host, ports)

    @property
    def wildcard(self) -> bool:
        return self.host in ("0.0.0.0", "::")


def _unix_name(name: str) -> str | bytes:
    if name.startswith("@@"):
        # Xray pads "@@name" to the full sun_path length with NULs (as haproxy/others expect).
        raw = b"\0" + name[2:].encode()
        return raw + b"\0" * (108 - len(raw))
    if name.startswith("@"):
        return "\0" + name[1:]
    return name


def make_socket(addr: ListenAddress, port: int, kind: int, *, transparent: bool = False) -> socket.socket:
    """A bound (not yet listening) socket of *kind* (SOCK_STREAM/SOCK_DGRAM) for one port."""
    if addr.unix:
        sock = socket.socket(socket.AF_UNIX, kind)
        try:
            if not addr.unix.startswith("@") and os.path.exists(addr.unix):
                os.unlink(addr.unix)
            sock.bind(_unix_name(addr.unix))
            if addr.mode is not None and not addr.unix.startswith("@"):
                os.chmod(addr.unix, addr.mode)
        except BaseException:
            sock.close()
            raise
        sock.setblocking(False)
        return sock
    host = addr.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if addr.wildcard and socket.has_ipv6:
        family, host = socket.AF_INET6, "::"
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if addr.wildcard else 1)
        if transparent:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
            else:
                sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            if kind == socket.SOCK_DGRAM:
                sock.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVORIGDSTADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if addr.wildcard and family == socket.AF_INET6 and exc.errno == 97:  # EAFNOSUPPORT
                sock.close()
                return make_socket(ListenAddress("0.0.0.0", addr.ports), port, kind, transparent=transparent)
            raise
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


@functools.lru_cache(maxsize=4096)
def _host(text: str) -> Host:
    # Clients come back from few addresses: caching the parse saves ~3 µs per connection.
    if text.startswith("::ffff:") and "." in text:
        text = text[7:]
    return parse_host(text)


def sockaddr_destination(addr: object, network: Network = Network.TCP) -> Destination:
    """A socket address tuple as a Destination (Unix peers become ``0.0.0.0:0``)."""
    if isinstance(addr, tuple) and len(addr) >= 2 and isinstance(addr[0], str):
        return Destination(network, _host(addr[0]), int(addr[1]))
    return Destination(network, ipaddress.IPv4Address(0), 0)


Handler = Callable[[SocketStream, socket.socket], Coroutine[Any, Any, None]]


#: Connections taken per readiness callback of a listener (then other work gets the loop).
ACCEPT_BATCH = 64
#: Out of descriptors (or memory): stop accepting this long instead of spinning; the
#: backlog keeps the connections meanwhile.
ACCEPT_BACKOFF = 0.5
#: ``accept`` errors that mean "out of descriptors or memory": pause (:func:`pause_accepting`), do not spin.
OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def pause_accepting(loop: asyncio.AbstractEventLoop, lsock: socket.socket, seconds: float,
                    still_wanted: Callable[[], bool], on_accept: Callable[..., object], *args: object) -> None:
    """Stop watching *lsock* for *seconds* (its backlog keeps the connections), then watch it
    again with ``on_accept(*args)`` if ``still_wanted()`` and the socket is still open."""
    loop.remove_reader(lsock.fileno())

    def resume() -> None:
        if still_wanted() and lsock.fileno() >= 0:
            loop.add_reader(lsock.fileno(), on_accept, *args)

    loop.call_later(seconds, resume)


class StreamServer:
    """Accepts on bound sockets; one handler task per connection, all cancelled by ``aclose``.

    Each accepted socket becomes a :class:`~tunray.net.stream.SocketStream` (no transport),
    so a flow between it and a dialed socket is copied from loop callbacks by the relay.
    """

    def __init__(self, handler: Handler, *, high_water: int = DEFAULT_HIGH_WATER) -> None:
        self.handler = handler
        self.high_water = high_water
        self.tasks: set[asyncio.Task[None]] = set()
        self._listeners: list[socket.socket] = []
        self._unix_paths: list[str] = []
        self._backoff_logged = False
        #: the loop the server listens in (kept: asyncio.get_running_loop() is a getpid() on 3.11)
        self.loop: asyncio.AbstractEventLoop | None = None

    async def listen(self, sock: socket.socket, backlog: int = 1024) -> None:
        loop = self.loop = asyncio.get_running_loop()
        if sock.family == socket.AF_UNIX:
            name = sock.getsockname()
            if isinstance(name, str) and name:
                self._unix_paths.append(name)
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
            # accepted sockets inherit it: no Nagle delay towards the app (a transport set it per socket)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.listen(backlog)
        sock.setblocking(False)
        self._listeners.append(sock)
        loop.add_reader(sock.fileno(), self._on_accept, sock)

    def _on_accept(self, lsock: socket.socket) -> None:
        loop = self.loop
        assert loop is not None
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in OUT_OF_RESOURCES:
                    self._back_off(lsock, exc)
                    return
                continue  # e.g. ECONNABORTED: that connection is gone, the next may not be
            conn.setblocking(False)
            self.spawn(SocketStream(conn, loop, self.high_water), conn)

    def _back_off(self, lsock: socket.socket, exc: OSError) -> None:
        loop = self.loop
        assert loop is not None
        if not self._backoff_logged:
            self._backoff_logged = True
            logger.warning("listener {}: cannot accept ({}); pausing {:g} s", lsock.getsockname(),
                           exc.strerror or exc, ACCEPT_BACKOFF)
        pause_accepting(loop, lsock, ACCEPT_BACKOFF, lambda: lsock in self._listeners, self._on_accept, lsock)

    def spawn(self, stream: SocketStream, sock: socket.socket) -> None:
        assert self.loop is not None
        task = self.loop.create_task(self.handler(stream, sock))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def stop_accepting(self) -> None:
        """Close the listening sockets; connections already accepted go on."""
        loop = self.loop
        for sock in self._listeners:
            if loop is not None and sock.fileno() >= 0:
                loop.remove_reader(sock.fileno())
            sock.close()
        self._listeners.clear()

    async def aclose(self) -> None:
        self.stop_accepting()
        tasks = list(self.tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for path in self._unix_paths:
            try:
                os.unlink(path)
            except OSError:
                pass
        self._unix_paths.clear()
