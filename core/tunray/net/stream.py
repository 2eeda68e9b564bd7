"""A byte stream over a connected socket, with backpressure both ways.

``SocketStream`` is a :class:`~tunray.bytestream.ByteStream`, like the app's
:class:`~tunray.link.ByteLink`, so relays and transports treat an app link and an
upstream socket alike.  It is built on an asyncio ``Protocol``:
received data is appended to one ``bytearray`` and ``read`` hands out up to
``max_bytes`` at once; when more than ``high_water`` bytes wait unread the transport
stops reading, so the kernel's receive window closes on the sender.  ``write``
waits while the transport's own buffer is above its high-water mark.

Ends.  A FIN from the peer is EOF (``read`` returns ``b""`` after the buffered
bytes).  A reset (``connection_lost`` with an error, e.g. ECONNRESET) is kept and
raised as :class:`~tunray.bytestream.StreamReset` once the bytes received before it
have been read, and at once by ``write``.  ``abort`` sends a RST (``SO_LINGER`` 0), not
a FIN, so a reset passes through the proxy as a reset.
"""

from __future__ import annotations

import asyncio
import socket
import struct

from tunray.bytestream import ByteStream, StreamClosed, StreamReset

DEFAULT_HIGH_WATER = 1 << 20
_LINGER_RESET = struct.pack("ii", 1, 0)


class _Proto(asyncio.Protocol):
    __slots__ = (
        "_buf",
        "_closed",
        "_drain_waiter",
        "_eof",
        "_exc",
        "_high",
        "_local",
        "_loop",
        "_paused_reading",
        "_paused_writing",
        "_read_waiter",
        "transport",
    )

    def __init__(self, high_water: int, loop: asyncio.AbstractEventLoop) -> None:
        # The loop is kept: on Python 3.11 every asyncio.get_running_loop() is a getpid()
        # system call, and a flow's streams wait for data several times.
        self._loop = loop
        self._buf = bytearray()
        self._eof = False
        self._closed = False
        self._exc: StreamReset | None = None
        self._local = False  # closed or aborted by this side
        self._high = high_water
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._paused_reading = False
        self._paused_writing = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > self._high and not self._paused_reading and self.transport is not None:
            self._paused_reading = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        return True  # keep the write side open: half-close

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._eof = True
        if exc is not None and not self._local:
            reset = StreamReset(f"connection reset by the peer: {exc}")
            reset.__cause__ = exc
            self._exc = reset
        self._wake_reader()
        self._wake_writer(self._exc)

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        self._wake_writer(None)

    def _wake_reader(self) -> None:
        w = self._read_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _wake_writer(self, exc: BaseException | None) -> None:
        w = self._drain_waiter
        if w is not None and not w.done():
            if exc is None:
                w.set_result(None)
            else:
                w.set_exception(exc)


class SocketStream(ByteStream):
    """See the module docstring.  Create with :func:`open_stream`."""

    __slots__ = ("_proto", "_sock_fd", "_transport", "_write_closed")

    def __init__(self, transport: asyncio.Transport, proto: _Proto, fd: int) -> None:
        self._transport = transport
        self._proto = proto
        self._sock_fd = fd
        self._write_closed = False

    async def read(self, max_bytes: int = 65536) -> bytes:
        p = self._proto
        if p._local:
            return b""
        while not p._buf:
            if p._local:
                return b""
            if p._exc is not None:
                raise p._exc
            if p._eof:
                return b""
            if p._paused_reading and not p._closed:  # e.g. after splice_ready() then a copy after all
                p._paused_reading = False
                self._transport.resume_reading()
            p._read_waiter = p._loop.create_future()
            try:
                await p._read_waiter
            finally:
                p._read_waiter = None
        buf = p._buf
        if len(buf) <= max_bytes:
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:max_bytes])
            del buf[:max_bytes]
        if p._paused_reading and len(buf) <= p._high // 2 and not p._closed:
            p._paused_reading = False
            self._transport.resume_reading()
        return data

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        p = self._proto
        if p._exc is not None:
            raise p._exc
        if p._local or self._write_closed:
            raise StreamClosed("the stream is closed for writing")
        if p._closed or self._transport.is_closing():
            raise StreamReset("the connection is gone")
        self._transport.write(data)
        if p._paused_writing:
            p._drain_waiter = p._loop.create_future()
            try:
                await p._drain_waiter
            finally:
                p._drain_waiter = None

    async def write_eof(self) -> None:
        if self._write_closed:
            return
        self._write_closed = True
        if not self._proto._closed and not self._transport.is_closing() and self._transport.can_write_eof():
            self._transport.write_eof()

    def abort(self) -> None:
        p = self._proto
        if p._local:
            return
        p._local = True
        if not p._closed:
            sock = self._transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                except OSError:
                    pass
        self._transport.abort()
        p._wake_reader()
        p._wake_writer(StreamClosed("aborted"))

    def reset(self) -> None:
        """Abort with a TCP RST (SO_LINGER 0): the same as :meth:`abort`."""
        self.abort()

    def send_and_close(self, data: bytes) -> None:
        """Queue *data* and close gracefully (a refusal reply before the app's flow ends)."""
        self._proto._local = True
        if not self._transport.is_closing():
            self._transport.write(data)
            self._transport.close()
        self._proto._wake_reader()

    async def aclose(self) -> None:
        p = self._proto
        p._local = True
        if not self._transport.is_closing():
            self._transport.close()
        p._wake_reader()

    def fileno(self) -> int:
        return self._sock_fd

    def take_for_splice(self) -> bytes | None:
        p = self._proto
        if p._closed or p._local or p._eof or self._write_closed or self._transport.get_write_buffer_size():
            return None
        if not p._paused_reading:
            p._paused_reading = True
            self._transport.pause_reading()
        data = bytes(p._buf)
        p._buf.clear()
        return data

    async def drain_for_splice(self) -> None:
        p = self._proto
        t = self._transport
        if not t.get_write_buffer_size():
            return
        # A high-water mark of 0 pauses the protocol now and resumes it once the buffer
        # is empty (asyncio and uvloop alike); the mark is restored however the wait ends.
        t.set_write_buffer_limits(high=0)
        try:
            while t.get_write_buffer_size() and not (p._closed or p._local):
                p._drain_waiter = p._loop.create_future()
                try:
                    await p._drain_waiter
                except ConnectionError:
                    return  # reset meanwhile: take_for_splice refuses, the copy raises it
                finally:
                    p._drain_waiter = None
        finally:
            if not t.is_closing():
                t.set_write_buffer_limits(high=p._high)

    @property
    def transport(self) -> asyncio.Transport:
        """The asyncio transport (the relay pauses it while splicing)."""
        return self._transport

    @property
    def at_eof(self) -> bool:
        return self._proto._eof and not self._proto._buf


async def open_stream(sock: socket.socket, high_water: int = DEFAULT_HIGH_WATER) -> SocketStream:
    """Wrap a connected non-blocking socket; the stream owns it from now on."""
    loop = asyncio.get_running_loop()
    fd = sock.fileno()
    transport, proto = await loop.create_connection(lambda: _Proto(high_water, loop), sock=sock)
    transport.set_write_buffer_limits(high=high_water)
    return SocketStream(transport, proto, fd)
