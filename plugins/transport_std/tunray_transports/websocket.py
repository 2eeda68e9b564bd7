"""WebSocket stream: the asyncio adapter over :mod:`tunray_transports.wsframe`.

Theory of operation.  Without early data the opening handshake runs inside ``wrap``.
With ``?ed=N`` (Xray's early data) the handshake waits for the first ``write``: up to N
of its bytes travel base64url-encoded (no padding) in ``Sec-WebSocket-Protocol`` and
the rest follows as frames once the ``101`` is in; a ``read`` issued earlier waits for
that handshake.  Reads decode frames as they arrive and answer Pings and Close from
the read path; every write to the inner stream (data, Pong, Close) goes through one
lock, so frames never interleave.  WebSocket has no half-close, so ``write_eof`` keeps
the connection open (as Xray does: the flow ends when the downlink ends;
``half_close = False``); ``aclose`` sends a Close frame when it can and closes the
inner stream.

Ends (the :class:`~tunray.bytestream.ByteStream` contract).  A Close frame with code
1000 (normal), 1001 (going away) or none, or the TCP connection ending without a Close
frame (what Go servers often do), is EOF.  A Close frame with any other code, a
protocol error, or a reset of the connection underneath is raised as
:class:`~tunray.bytestream.StreamReset` once the bytes received before it are read.
"""

from __future__ import annotations

import asyncio
import base64

from tunray.bytestream import ByteStream, StreamClosed, StreamReset

from tunray_transports.http1 import ResponseReader, ws_accept
from tunray_transports.settings import HttpOptions
from tunray_transports.upgrade import read_head, upgrade_request
from tunray_transports.wsframe import Close, CloseCode, Data, ProtocolError, State, WebSocketConnection

READ_CHUNK = 256 * 1024
CLEAN_CLOSE = frozenset({CloseCode.NORMAL, CloseCode.GOING_AWAY, CloseCode.NO_STATUS})


def early_data_header(early: bytes) -> str:
    return base64.urlsafe_b64encode(early).rstrip(b"=").decode()


class WebSocketStream(ByteStream):
    """WebSocket client stream; build with :func:`open_websocket`."""

    half_close = False

    __slots__ = (
        "_closed",
        "_conn",
        "_end_error",
        "_eof",
        "_error",
        "_host",
        "_inner",
        "_leftover",
        "_opts",
        "_rbuf",
        "_ready",
        "_wlock",
    )

    def __init__(self, inner: ByteStream, opts: HttpOptions, host: str) -> None:
        self._inner = inner
        self._opts = opts
        self._host = host
        self._conn = WebSocketConnection()
        self._ready = asyncio.Event()
        self._error: BaseException | None = None
        self._end_error: StreamReset | None = None  # raised once the buffered bytes are read
        self._leftover = b""
        self._rbuf = bytearray()
        self._eof = False
        self._closed = False
        self._wlock = asyncio.Lock()

    async def handshake(self, early: bytes = b"") -> None:
        extra = (("Sec-WebSocket-Protocol", early_data_header(early)),) if early else ()
        try:
            request, key = upgrade_request(self._opts, self._host, extra)
            await self._inner.write(request)
            self._leftover = await read_head(self._inner, ResponseReader(), ws_accept(key))
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self._ready.set()

    def _check(self) -> None:
        if self._error is not None:
            if isinstance(self._error, StreamReset):
                raise self._error
            raise StreamReset(f"WebSocket failed: {self._error}") from self._error

    async def read(self, max_bytes: int = 65536) -> bytes:
        if not self._ready.is_set():
            await self._ready.wait()
        rbuf = self._rbuf
        while not rbuf:
            if self._closed:
                return b""
            self._check()
            if self._eof:
                if self._end_error is not None:
                    raise self._end_error
                return b""
            try:
                data = self._leftover or await self._inner.read(READ_CHUNK)
            except StreamReset as exc:
                self._error = exc
                raise
            self._leftover = b""
            if not data:
                self._eof = True  # TCP closed without a Close frame: end of stream
                return b""
            try:
                events = self._conn.receive(data)
            except ProtocolError as exc:
                self._error = exc
                await self._send(self._conn.close(exc.code))
                raise StreamReset(f"WebSocket protocol error: {exc}") from exc
            for ev in events:
                if isinstance(ev, Data):
                    if not rbuf and len(ev.payload) <= max_bytes and len(events) == 1:
                        reply = self._conn.data_to_send()
                        if reply:
                            await self._send(reply)
                        return ev.payload
                    rbuf += ev.payload
                elif isinstance(ev, Close):
                    self._eof = True
                    if ev.code not in CLEAN_CLOSE:
                        self._end_error = StreamReset(f"WebSocket closed by the server with code {ev.code} {ev.reason!r}")
            reply = self._conn.data_to_send()
            if reply:
                await self._send(reply)
        if len(rbuf) <= max_bytes:
            out = bytes(rbuf)
            rbuf.clear()
        else:
            out = bytes(rbuf[:max_bytes])
            del rbuf[:max_bytes]
        return out

    async def _send(self, frames: bytes) -> None:
        if not frames:
            return
        async with self._wlock:
            try:
                await self._inner.write(frames)
            except ConnectionError:
                if self._conn.state is State.OPEN:
                    raise

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise StreamClosed("WebSocket stream is closed")
        async with self._wlock:
            if not self._ready.is_set():
                ed = self._opts.early_data
                await self.handshake(bytes(data[:ed]))
                data = data[ed:]
                if not data:
                    return
            self._check()
            await self._inner.write(self._conn.send(data))

    async def write_eof(self) -> None:
        """WebSocket cannot half-close; the connection stays open for the downlink."""

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._ready.is_set():
            self._error = ConnectionResetError("closed before the handshake")
            self._ready.set()
        try:
            if self._error is None and not self._wlock.locked():
                frame = self._conn.close()
                if frame:
                    async with self._wlock:
                        await self._inner.write(frame)
        except ConnectionError:
            pass
        finally:
            await self._inner.aclose()

    def abort(self) -> None:
        self._closed = True
        if not self._ready.is_set():
            self._error = ConnectionResetError("aborted")
            self._ready.set()
        self._inner.abort()


async def open_websocket(inner: ByteStream, opts: HttpOptions, host: str) -> WebSocketStream:
    stream = WebSocketStream(inner, opts, host)
    if opts.early_data <= 0:
        await stream.handshake()
    return stream
