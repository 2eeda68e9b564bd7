"""``KernelByteLink``: a NATed TCP flow, whose app side is a socket the kernel accepted.

The link is made when the app's SYN arrives (so routing and the outbound's dial run
while the SYN is held), and paired with its socket when the listener accepts the
connection.  Until then ``read``/``write`` wait for the socket; ``accept`` lets the held
SYN through and waits for the socket (at most ``handshake_timeout`` seconds).  Once
paired, every operation is the socket's (:class:`~tunray.net.stream.SocketStream`, with its
EOF/:class:`~tunray.bytestream.StreamReset` semantics) and :meth:`fileno` /
:meth:`take_for_splice` hand it to :func:`tunray.relay.relay`, which splices it to the
outbound's socket when that one is a bare socket too (``freedom``).

``abort`` resets: a held SYN is answered with RST by the core; a socket is closed with
``SO_LINGER {1, 0}``, which makes the kernel send RST, whether it is paired already or
arrives later.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from tunray.link import ByteLink, LinkClosed
from tunray.net.stream import SocketStream, open_stream

if TYPE_CHECKING:
    from tunray_stack_system.stack import SystemStack

_LINGER_RESET = struct.pack("ii", 1, 0)


def reset_close(sock: socket.socket) -> None:
    """Close *sock* so that the kernel sends RST, not FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass
    sock.close()


class KernelByteLink(ByteLink):
    __slots__ = ("_accepted", "_closed", "_handle", "_opening", "_sock", "_sock_ready", "_stack", "_stream",
                 "_withdrawn")

    def __init__(self, stack: SystemStack, handle: int, accepted: bool) -> None:
        self._stack = stack
        self._handle = handle
        self._accepted = accepted
        self._closed = False
        self._sock: socket.socket | None = None
        self._stream: SocketStream | None = None
        self._sock_ready: asyncio.Future[None] | None = None
        self._opening: asyncio.Future[SocketStream | None] | None = None
        self._withdrawn: Callable[[], None] | None = None

    def on_withdrawn(self, callback: Callable[[], None]) -> None:
        if not self._accepted and not self._closed:
            self._withdrawn = callback

    @property
    def handle(self) -> int:
        return self._handle

    @property
    def accepted(self) -> bool:
        return self._accepted

    # --- called by the stack ----------------------------------------------------------------------

    def _attach(self, sock: socket.socket) -> None:
        """The listener accepted our connection."""
        if self._closed:
            reset_close(sock)
            return
        self._sock = sock
        fut = self._sock_ready
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _timed_out(self) -> None:
        """Waited handshake_timeout for the socket: wake the waiter, which gives up if it still has none."""
        fut = self._sock_ready
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _ended(self) -> None:
        """The app gave up (RST, or the entry expired or was evicted) before the socket came."""
        self._closed = True
        fut = self._sock_ready
        if fut is not None and not fut.done():
            fut.set_result(None)
        withdrawn, self._withdrawn = self._withdrawn, None
        if withdrawn is not None and not self._accepted:
            withdrawn()  # before accept: stop the flow's dial

    # --- the ByteLink contract ----------------------------------------------------------------------

    async def _ready(self) -> SocketStream | None:
        """The paired socket's stream; None if the flow ended first (or never paired in time).

        The first caller (``accept``, as a rule) opens it itself; a caller that comes while
        it does waits on :attr:`_opening` (shielded, so its cancellation does not end the
        opening); if the opener is cancelled, the flow is being torn down and every later
        caller gets None.  No task, shield or ``wait_for`` per flow on the common path.
        """
        stream = self._stream
        if stream is not None:
            return stream
        opening = self._opening
        if opening is not None:
            return await asyncio.shield(opening)
        loop = self._stack.loop or asyncio.get_running_loop()  # Python 3.11: get_running_loop() is a getpid()
        self._opening = opening = loop.create_future()
        try:
            stream = await self._open(loop)
        finally:
            if not opening.done():
                opening.set_result(self._stream)
        return stream

    async def _open(self, loop: asyncio.AbstractEventLoop) -> SocketStream | None:
        if self._sock is None and not self._closed:
            ready = self._sock_ready = loop.create_future()
            self._stack.wait_socket(self)  # wakes *ready* after handshake_timeout (no timer per flow)
            try:
                await ready
            finally:
                self._stack.stop_waiting(self)
            if self._sock is None and not self._closed:
                self._stack.count("tcp_handshake_timeout")
                self.abort()
                return None
        sock = self._sock
        if self._closed or sock is None:
            return None
        try:
            stream = await open_stream(sock, high_water=self._stack.options.tcp_buffer)
        except OSError:  # reset-closed by abort() meanwhile
            return None
        if self._closed:  # aborted while the transport was made
            stream.abort()
            return None
        self._stream = stream
        self._stack.track(self)
        return stream

    async def accept(self) -> None:
        if self._closed:
            raise LinkClosed("the app reset the connection before it was accepted")
        if not self._accepted:
            self._accepted = True
            self._stack.release_syn(self._handle)
        if await self._ready() is None:
            raise LinkClosed("the app's handshake did not complete")

    async def read(self, max_bytes: int = 65536) -> bytes:
        stream = self._stream  # paired (the common case): no wait
        if stream is None:
            stream = await self._ready()
            if stream is None:
                return b""
        return await stream.read(max_bytes)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        stream = self._stream
        if stream is None:
            stream = await self._ready()
        if stream is None or self._closed:
            raise LinkClosed("the flow is closed")
        try:
            await stream.write(data)
        except ConnectionError as exc:
            raise LinkClosed(str(exc)) from None

    async def write_eof(self) -> None:
        stream = self._stream
        if stream is not None and not self._closed:
            await stream.write_eof()

    def abort(self) -> None:
        if self._closed and self._sock is None:
            return
        first = not self._closed
        self._closed = True
        sock, stream = self._sock, self._stream
        self._sock = self._stream = None
        if stream is not None and sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass
            stream.abort()
            self._stack.untrack(self)
        elif sock is not None:
            reset_close(sock)
        elif first:
            self._stack.refuse(self._handle)
        fut = self._sock_ready
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def aclose(self) -> None:
        if self._closed:
            return
        stream = self._stream
        if stream is None:
            self.abort()  # never paired: a SYN not answered is refused, a half-made connection reset
            return
        self._closed = True
        self._stream = self._sock = None
        self._stack.untrack(self)
        await stream.aclose()

    def fileno(self) -> int | None:
        stream = self._stream
        return stream.fileno() if stream is not None and not self._closed else None

    def socket_stream(self) -> SocketStream | None:
        """The paired socket's stream: the relay copies on it directly (None before pairing)."""
        stream = self._stream
        return stream if stream is not None and not self._closed else None

    def take_for_splice(self) -> bytes | None:
        """The paired socket's :meth:`~tunray.net.stream.SocketStream.take_for_splice` (None before pairing)."""
        stream = self._stream
        return stream.take_for_splice() if stream is not None and not self._closed else None

    async def drain_for_splice(self) -> None:
        stream = self._stream
        if stream is not None:
            await stream.drain_for_splice()
