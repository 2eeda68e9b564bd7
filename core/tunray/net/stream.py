"""A byte stream over a connected socket, with backpressure both ways.

:class:`SocketStream` (made by :func:`open_stream`; every dialed socket, the ``system``
stack's accepted ones, those of listening inbounds) drives the non-blocking socket
itself: ``read`` is one ``recv`` (waiting for readability with ``loop.add_reader`` only
when the last ``recv`` did not fill its buffer), ``write`` one ``send``; only what the
kernel would not take is kept, sent from a ``loop.add_writer`` callback, and ``write``
waits while more than ``high_water`` bytes are kept.  Nothing is read that nobody asked for, so
the kernel's receive window closes on a sender nobody reads.  No transport, protocol,
buffer copy or extra loop iteration per socket: a short flow's two sockets cost a
reader registration each and nothing else.

Ends.  A FIN from the peer is EOF (``read`` returns ``b""`` after every byte before
it).  A reset (ECONNRESET, or any other socket error) is kept and raised as
:class:`~tunray.bytestream.StreamReset` once the bytes received before it have been
read, and at once by ``write``.  ``abort`` sends a RST (``SO_LINGER`` 0), not a FIN, so
a reset passes through the proxy as a reset.  ``aclose`` closes gracefully: bytes
still kept are sent first (in the background, as a transport's ``close`` does).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable

from tunray.bytestream import ByteStream, StreamClosed, StreamReset

DEFAULT_HIGH_WATER = 1 << 20
_LINGER_RESET = struct.pack("ii", 1, 0)


def _wake(waiter: asyncio.Future[None] | None, exc: BaseException | None) -> None:
    if waiter is not None and not waiter.done():
        if exc is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(exc)


def reset_error(exc: BaseException) -> StreamReset:
    """The :class:`StreamReset` a socket error *exc* means for the stream's user."""
    reset = StreamReset(f"connection reset by the peer: {exc}")
    reset.__cause__ = exc
    return reset


class SocketStream(ByteStream):
    """See the module docstring.  Create with :func:`open_stream`; the stream owns the socket."""

    __slots__ = (
        "_armed",
        "_close_queued",
        "_closed",
        "_eof",
        "_exc",
        "_fd",
        "_high",
        "_local",
        "_loop",
        "_maybe_readable",
        "_read_waiter",
        "_reading",
        "_shut_queued",
        "_sock",
        "_wake_at",
        "_wbuf",
        "_write_closed",
        "_write_waiter",
        "_writing",
    )

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop, high_water: int = DEFAULT_HIGH_WATER) -> None:
        # The loop is kept: on Python 3.11 every asyncio.get_running_loop() is a getpid() system call.
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = loop
        self._high = high_water
        self._maybe_readable = False  # the last recv filled its buffer, or the loop said readable
        self._reading = False  # a reader may be registered with the loop (removed before close)
        self._armed = False  # ... and is known to be alive (registered since its last callback)
        self._read_waiter: asyncio.Future[None] | None = None
        self._wbuf: bytearray | None = None  # what the kernel did not take yet (a writer is registered)
        self._writing = False  # a writer is registered with the loop
        self._write_waiter: asyncio.Future[None] | None = None
        self._wake_at = 0  # wake the writer once no more than this is kept
        self._eof = False
        self._exc: StreamReset | None = None
        self._closed = False  # the descriptor is closed
        self._local = False  # closed or aborted by this side
        self._write_closed = False
        self._shut_queued = False  # shutdown(SHUT_WR) once the kept bytes are sent
        self._close_queued = False  # close once the kept bytes are sent (aclose with bytes kept)

    # --- loop callbacks ----------------------------------------------------------------------------

    def _on_readable(self) -> None:
        # uvloop also runs this when the poll failed (POLLERR: a reset), and then closes the
        # poll: the next wait registers again (replacing a live registration costs ~0.3 µs,
        # a new one ~4 µs), so the watch is not lost after a reset that follows data.
        self._maybe_readable = True
        self._armed = False
        w = self._read_waiter
        if w is None:
            # nobody reads now (the copy waits for its write): stop watching, let the window close
            self._reading = False
            self._loop.remove_reader(self._fd)
        elif not w.done():
            w.set_result(None)

    def _arm(self) -> None:
        """Make sure the reader is registered and alive before waiting."""
        self._watch_reads(self._on_readable)
        self._armed = True

    def _watch_reads(self, callback: Callable[[], None]) -> None:
        """Register *callback* for readability (replacing any); the stream removes it before closing."""
        self._armed = False
        self._reading = True
        loop, fd = self._loop, self._fd
        try:
            loop.add_reader(fd, callback)
        except RuntimeError:  # uvloop closed the poll after an error: register afresh
            if self._writing:
                self._writing = False
                loop.remove_writer(fd)
            loop.remove_reader(fd)
            loop.add_reader(fd, callback)

    def _watch_writes(self, callback: Callable[[], None]) -> None:
        """Register *callback* for writability; the stream removes it before closing."""
        self._writing = True
        loop, fd = self._loop, self._fd
        try:
            loop.add_writer(fd, callback)
        except RuntimeError:  # uvloop closed the poll after an error (see _on_readable)
            self._armed = self._reading = False
            loop.remove_reader(fd)
            loop.remove_writer(fd)
            loop.add_writer(fd, callback)

    def _stop_writing(self) -> None:
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)

    def _on_writable(self) -> None:
        buf = self._wbuf
        if buf is None:
            return
        try:
            n = self._sock.send(buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._failed(exc)
            return
        del buf[:n]
        if not buf:
            self._wbuf = None
            self._stop_writing()
            if self._close_queued:
                if not self._eof:
                    self._discard_unread()  # what came while the tail was sent: a FIN, not a RST
                self._close_fd()
                return
            if self._shut_queued:
                self._shutdown()
        if len(buf) <= self._wake_at:
            self._wake_writer(None)

    # --- state changes -------------------------------------------------------------------------------

    def _failed(self, exc: OSError) -> None:
        """A socket error: a reset for both directions, the descriptor released."""
        if self._exc is None and not self._local:
            self._exc = reset_error(exc)
        if self._close_queued:
            self._close_fd()
            return
        self._unwatch()
        self._wake_reader()
        self._wake_writer(self._exc)

    def _stop_reading(self) -> None:
        self._armed = False
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def _unwatch(self) -> None:
        self._stop_reading()
        self._wbuf = None
        self._stop_writing()

    def _close_fd(self) -> None:
        if self._closed:
            return
        self._unwatch()
        self._closed = True
        self._sock.close()
        self._wake_reader()
        self._wake_writer(self._exc or StreamClosed("the stream is closed"))

    def _shutdown(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _wake_reader(self) -> None:
        _wake(self._read_waiter, None)

    def _wake_writer(self, exc: BaseException | None) -> None:
        _wake(self._write_waiter, exc)

    # --- the ByteStream contract -----------------------------------------------------------------------

    async def read(self, max_bytes: int = 65536) -> bytes:
        while True:
            if self._local:
                return b""
            if self._exc is not None:
                raise self._exc
            if self._eof or self._closed:
                return b""
            if self._maybe_readable:
                try:
                    data = self._sock.recv(max_bytes)
                except (BlockingIOError, InterruptedError):
                    self._maybe_readable = False
                except OSError as exc:
                    self._failed(exc)
                    continue
                else:
                    if not data:
                        self._eof = True
                        self._maybe_readable = False
                        self._stop_reading()
                    elif len(data) < max_bytes:
                        self._maybe_readable = False  # most likely drained: wait before the next recv
                    return data
            if not self._armed:
                self._arm()
            self._read_waiter = w = self._loop.create_future()
            try:
                await w
            finally:
                self._read_waiter = None

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._exc is not None:
            raise self._exc
        if self._local or self._write_closed:
            raise StreamClosed("the stream is closed for writing")
        if self._closed:
            raise StreamReset("the connection is gone")
        try:
            buf = self._send_or_keep(data)
        except OSError as exc:
            self._failed(exc)
            assert self._exc is not None
            raise self._exc from None
        if buf is not None and len(buf) > self._high:
            await self._wait_written(self._high // 4)

    def _send_or_keep(self, data: bytes | bytearray | memoryview) -> bytearray | None:
        """Send *data*, keeping what the kernel does not take for the writer callback; the bytes kept."""
        buf = self._wbuf
        if buf is not None:
            buf += data
            return buf
        try:
            n = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        if n == len(data):
            return None
        self._wbuf = buf = bytearray(memoryview(data)[n:])
        self._watch_writes(self._on_writable)
        return buf

    async def _wait_written(self, keep: int) -> None:
        """Wait until no more than *keep* bytes are kept (raises what ended the stream meanwhile)."""
        while self._wbuf is not None and len(self._wbuf) > keep:
            self._wake_at = keep
            self._write_waiter = w = self._loop.create_future()
            try:
                await w
            finally:
                self._write_waiter = None

    async def write_eof(self) -> None:
        if self._write_closed:
            return
        self._write_closed = True
        if self._closed or self._local or self._exc is not None:
            return
        if self._wbuf is not None:
            self._shut_queued = True
        else:
            self._shutdown()

    def abort(self) -> None:
        if self._local and self._closed:
            return
        self._local = True
        if not self._closed:
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass
            self._close_queued = False
            self._close_fd()
        self._wake_reader()
        self._wake_writer(StreamClosed("aborted"))

    def reset(self) -> None:
        """Abort with a TCP RST (SO_LINGER 0): the same as :meth:`abort`."""
        self.abort()

    def send_and_close(self, data: bytes) -> None:
        """Queue *data* and close gracefully (a refusal reply before the app's flow ends)."""
        if not self._local and not self._closed and self._exc is None and not self._write_closed:
            try:
                self._send_or_keep(data)
            except OSError:
                pass  # gone: nothing to deliver
        self._close_gracefully()

    async def aclose(self) -> None:
        self._close_gracefully()

    def _close_gracefully(self) -> None:
        self._local = True
        if self._closed:
            return
        if not self._eof and self._exc is None:
            self._discard_unread()
        if self._wbuf is not None and self._exc is None:
            self._close_queued = True  # sent first, from the writer callback, then closed
            self._stop_reading()
            self._wake_reader()
            return
        self._close_fd()

    def _discard_unread(self) -> None:
        """Read and drop what the peer sent and nobody read: closing a socket with unread
        bytes makes the kernel send RST instead of FIN (a transport, which reads ahead, never
        left any).  A relayed flow read both sockets to their EOF and skips this."""
        recv = self._sock.recv
        for _ in range(16):  # at most 1 MiB; a peer still sending after that gets its RST
            try:
                if not recv(65536):
                    self._eof = True
                    return
            except OSError:  # would block (the common case), or already reset
                return

    def fileno(self) -> int:
        return self._fd

    def socket_stream(self) -> SocketStream:
        return self

    def take_for_splice(self) -> bytes | None:
        if self._closed or self._local or self._eof or self._write_closed or self._wbuf is not None:
            return None
        if self._exc is not None:
            return None
        self._stop_reading()
        return b""  # nothing is ever read ahead

    async def drain_for_splice(self) -> None:
        try:
            await self._wait_written(0)
        except ConnectionError:
            return  # reset meanwhile: take_for_splice refuses, the copy raises it

    @property
    def at_eof(self) -> bool:
        return self._eof


async def open_stream(
    sock: socket.socket, high_water: int = DEFAULT_HIGH_WATER, loop: asyncio.AbstractEventLoop | None = None
) -> SocketStream:
    """Wrap a connected non-blocking socket; the stream owns it from now on."""
    return socket_stream(sock, high_water, loop or asyncio.get_running_loop())


def socket_stream(sock: socket.socket, high_water: int, loop: asyncio.AbstractEventLoop) -> SocketStream:
    """:func:`open_stream` without a coroutine, for callers that know their loop."""
    return SocketStream(sock, loop, high_water)
