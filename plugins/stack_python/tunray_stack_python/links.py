"""The app side of the core's connections and flows, as tunray links.

A link never owns a task: it parks one future for a reader and one for a writer and
sets the core's interest flag (``want_read``/``want_write``); the stack resolves the
future when the matching event comes out of the core.  Every operation that changes
the core asks the stack to flush (once per loop iteration).

A reset by the app (RST) ends the link: ``read`` returns ``b""`` and ``write`` raises
:class:`~tunray.link.LinkClosed`; :attr:`TcpLink.reset` tells the two ends apart.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import TYPE_CHECKING

from tunray.link import ByteLink, LinkClosed, Packet, PacketLink
from tunray.net.address import Destination, Network

from tunray_stack_python.tcp import TcpConn
from tunray_stack_python.tcp_state import FIN_QUEUED, State
from tunray_stack_python.udp import UdpFlow

if TYPE_CHECKING:
    from tunray_stack_python.stack import PythonStack


def _wake(fut: asyncio.Future[None] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


class TcpLink(ByteLink):
    __slots__ = ("_closed", "_conn", "_read_waiter", "_stack", "_write_waiter")

    def __init__(self, stack: PythonStack, conn: TcpConn) -> None:
        self._stack = stack
        self._conn = conn
        self._closed = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._write_waiter: asyncio.Future[None] | None = None

    @property
    def conn(self) -> TcpConn:
        return self._conn

    @property
    def reset(self) -> bool:
        """True if the flow ended by a reset (from the app, a timeout, or :meth:`abort`)."""
        return self._conn.closed_reset

    @property
    def accepted(self) -> bool:
        return self._conn.state is not State.SYN_PENDING

    async def read(self, max_bytes: int = 65536) -> bytes:
        conn = self._conn
        stack = self._stack
        while True:
            if conn.rcvbuf and not self._closed:
                data = stack.core.tcp_read(conn, max_bytes, stack.time())
                stack.kick()
                return data
            if self._closed or conn.eof:
                return b""
            fut = stack.loop.create_future()
            self._read_waiter = fut
            conn.want_read = True
            try:
                await fut
            finally:
                self._read_waiter = None

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        conn = self._conn
        stack = self._stack
        if self._closed or conn.state is State.CLOSED or conn.fin_wanted or conn.state in FIN_QUEUED:
            raise LinkClosed("the flow is closed")
        if not data:
            return
        stack.core.tcp_write(conn, data, stack.time())
        stack.kick()
        high = stack.core.config.send_high_water
        while len(conn.sndbuf) > high:
            if self._closed or conn.state is State.CLOSED:  # type: ignore[comparison-overlap]
                raise LinkClosed("the flow was reset")
            fut = stack.loop.create_future()
            self._write_waiter = fut
            conn.want_write = True
            try:
                await fut
            finally:
                self._write_waiter = None

    async def write_eof(self) -> None:
        if self._closed or self._conn.state is State.CLOSED:
            return
        self._stack.core.tcp_shutdown(self._conn, self._stack.time())
        self._stack.kick()

    async def accept(self) -> None:
        conn = self._conn
        if conn.state is State.SYN_PENDING:
            self._stack.core.tcp_accept(conn, self._stack.time())
            self._stack.kick()
        elif conn.state is State.CLOSED and conn.closed_reset and not self._closed:
            raise LinkClosed("the app reset the connection before it was accepted")

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._conn.state is not State.CLOSED:
            self._stack.core.tcp_abort(self._conn, self._stack.time())
            self._stack.kick()
        self.wake()

    async def aclose(self) -> None:
        if self._closed:
            return
        conn = self._conn
        if conn.state is State.SYN_PENDING:
            self.abort()
            return
        self._closed = True
        if conn.state is not State.CLOSED:
            self._stack.core.tcp_close(conn, self._stack.time())
            self._stack.kick()
        self.wake()

    # --- called by the stack ----------------------------------------------------------------

    def wake_read(self) -> None:
        _wake(self._read_waiter)

    def wake_write(self) -> None:
        _wake(self._write_waiter)

    def wake(self) -> None:
        _wake(self._read_waiter)
        _wake(self._write_waiter)


def _ip(raw: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw)


class UdpLink(PacketLink):
    __slots__ = ("_closed", "_flow", "_last", "_stack", "_waiter")

    def __init__(self, stack: PythonStack, flow: UdpFlow) -> None:
        self._stack = stack
        self._flow = flow
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None
        self._last: tuple[bytes, int, Destination] | None = None

    @property
    def flow(self) -> UdpFlow:
        return self._flow

    async def recv(self) -> Packet | None:
        flow = self._flow
        while True:
            if flow.queue and not self._closed:
                payload, ip, port = flow.queue.popleft()
                last = self._last
                if last is None or last[0] != ip or last[1] != port:
                    last = self._last = (ip, port, Destination(Network.UDP, _ip(ip), port))
                return Packet(payload, last[2])
            if self._closed:
                return None
            fut = self._stack.loop.create_future()
            self._waiter = fut
            flow.want_read = True
            try:
                await fut
            finally:
                self._waiter = None

    def send(self, data: bytes, source: Destination) -> None:
        if self._closed:
            raise LinkClosed("the UDP flow is closed")
        host = source.host
        core = self._stack.core
        if isinstance(host, str):
            core.count("udp_reply_from_domain")
            return
        if self._flow.version == 4 and isinstance(host, ipaddress.IPv6Address) and host.ipv4_mapped:
            host = host.ipv4_mapped
        elif self._flow.version == 6 and isinstance(host, ipaddress.IPv4Address):
            host = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + host.packed)
        if core.udp_send(self._flow, data, host.packed, source.port, self._stack.time()):
            self._stack.kick()

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stack.core.udp_close(self._flow)
        self._stack.kick()
        _wake(self._waiter)

    async def aclose(self) -> None:
        self.abort()

    def closed_by_stack(self) -> None:
        self._closed = True
        _wake(self._waiter)

    def wake(self) -> None:
        _wake(self._waiter)
