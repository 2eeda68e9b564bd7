"""The uplink side shared by the XHTTP streams over HTTP/2 (:mod:`.xhttp`) and HTTP/1.1 (:mod:`.xhttp1`).

The uplink goes one of two ways.  ``stream-one`` and ``stream-up`` write it as the
body of one streaming POST (the *up* body: an HTTP/2 stream or an HTTP/1.1
connection), and ``write_eof`` ends that body.  ``packet-up`` queues it in a
:class:`~tunray_transports.xhttpframe.PacketBatcher`, and an uploader task sends one
POST per batch (:meth:`XhttpStreamBase._send_post`, which each transport defines);
``write`` waits while more than ``_limit`` bytes (twice the largest POST) are queued,
which is the uplink's backpressure, and ``write_eof`` sends nothing.

The first error of the uploader or of a POST's answer fails the flow (``_fail``):
every later ``write`` raises it, a waiting ``write`` is released to raise it, and the
transport wakes a waiting ``read`` so that it raises too.  Reading the downlink is
each transport's own.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import abstractmethod
from typing import Generic, Protocol, TypeVar

from tunray.bytestream import ByteStream, StreamClosed

from tunray_transports.xhttpframe import PacketBatcher


class UpBody(Protocol):
    """A streaming request body: the uplink of ``stream-one`` and ``stream-up``."""

    async def write(self, data: bytes | bytearray | memoryview) -> None: ...

    async def end(self) -> None: ...


UpT = TypeVar("UpT", bound=UpBody)


class XhttpStreamBase(ByteStream, Generic[UpT]):
    """Writes, half-close, packet-up uploads, failure and closing of an XHTTP stream.

    Give *up* (a streaming body) or *batcher* (packet-up), not both; with a batcher
    the uploader task starts here, so a subclass sets what ``_send_post`` needs
    before calling ``__init__``.  ``half_close`` is ``False`` in packet-up mode
    (nothing on the wire says "no more uplink"); the relay's timers then end the
    flow, as with WebSocket.
    """

    def __init__(self, up: UpT | None, batcher: PacketBatcher | None, limit: int) -> None:
        assert (up is None) != (batcher is None)
        self._up = up
        self._batcher = batcher
        self._limit = limit
        self.half_close = up is not None
        self._closed = False
        self._eof_sent = False
        self._error: BaseException | None = None
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        if batcher is not None:
            self._tasks.append(asyncio.get_running_loop().create_task(self._upload()))

    # -- what each transport defines --------------------------------------------

    @abstractmethod
    def _wake_reader(self, exc: BaseException) -> None:
        """Make a ``read`` waiting on the downlink raise (``_fail`` has recorded *exc*)."""

    @abstractmethod
    async def _send_post(self, seq: int, body: bytes) -> None:
        """packet-up: send POST number *seq*; raise ``ConnectionError``/``OSError`` to fail the flow."""

    def _upload_ended(self) -> None:
        """The uploader task ends (normally, by an error, or cancelled): release what it held."""

    @abstractmethod
    def _abort_connections(self) -> None:
        """Abort every connection of the flow (``abort``; the tasks are already cancelled)."""

    @abstractmethod
    async def _close_connections(self) -> None:
        """Close every connection of the flow (``aclose``; the tasks have ended)."""

    # -- the shared part --------------------------------------------------------

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed or self._eof_sent:
            raise StreamClosed("XHTTP write side closed")
        if self._error is not None:
            raise self._error
        if self._up is not None:
            await self._up.write(data)
            return
        batcher = self._batcher
        assert batcher is not None
        batcher.feed(data)
        self._wake.set()
        while batcher.pending > self._limit and self._error is None:
            self._drained.clear()
            await self._drained.wait()
        if self._error is not None:
            raise self._error

    async def write_eof(self) -> None:
        if self._eof_sent or self._closed:
            return
        self._eof_sent = True
        if self._up is not None:
            await self._up.end()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._drained.set()
        self._wake_reader(exc)

    async def _upload(self) -> None:
        batcher = self._batcher
        assert batcher is not None
        loop = asyncio.get_running_loop()
        try:
            while True:
                due = batcher.next_timer(loop.time())
                if due is None:
                    self._drained.set()
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                post = batcher.next_post(loop.time())
                if post is None:
                    continue
                if batcher.pending <= self._limit:
                    self._drained.set()
                await self._send_post(*post)
        except asyncio.CancelledError:
            raise
        except (ConnectionError, OSError) as exc:
            self._fail(exc)
        finally:
            self._upload_ended()

    def abort(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        self._abort_connections()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._close_connections()
