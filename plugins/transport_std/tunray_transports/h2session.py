"""An HTTP/2 client connection carrying several request streams, over our inner stream.

Theory of operation.  ``h2`` is the sans-IO HTTP/2 state machine; this is its asyncio
adapter for transports that need more than one stream per connection (XHTTP: a
download GET beside upload POSTs).  One pump task owns the inner stream's read side:
it feeds ``h2`` and routes events to :class:`H2Stream` objects by stream id.  Every
write takes ``data_to_send()`` under one lock, so frames keep ``h2``'s order.

Flow control: a stream's writer waits while its send window (or the connection's) is
empty; received DATA is acknowledged when the application reads it, so at most one
receive window per stream is buffered here.  A stream opened with ``discard=True``
(a response body nobody reads, such as XHTTP's stream-up keep-alive padding) is
acknowledged at once and dropped.

Ends: END_STREAM on a response is a clean end (``read`` returns ``b""``); RST_STREAM,
GOAWAY covering the stream, a protocol error or the connection ending first are
:class:`H2Error` (a ``ConnectionResetError``): the flow above is reset.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from tunray.bytestream import ByteStream, StreamReset

from tunray_transports.h2flow import queue_data, take

READ_CHUNK = 256 * 1024
DEFAULT_WINDOW = 1 << 20


class H2Error(StreamReset):
    """The HTTP/2 stream or connection failed (reset, GOAWAY, protocol error, bad status)."""


class H2Stream:
    """One request stream: response status, body reads, request body writes."""

    __slots__ = ("_buf", "_discard", "_eof", "_error", "_readable", "_session", "_unacked", "headers", "response", "sid")

    def __init__(self, session: H2Session, sid: int, discard: bool) -> None:
        self._session = session
        self.sid = sid
        self._discard = discard
        self._buf = bytearray()
        self._eof = False
        self._error: BaseException | None = None
        self._readable = asyncio.Event()
        self._unacked = 0
        self.response: asyncio.Future[list[tuple[bytes, bytes]]] = asyncio.get_running_loop().create_future()
        self.headers: list[tuple[bytes, bytes]] = []

    # called by the session's pump
    def _on_headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = headers
        if not self.response.done():
            self.response.set_result(headers)

    def _on_data(self, data: bytes, flow: int) -> None:
        if self._discard:
            self._session._ack(self.sid, flow)
            return
        self._buf += data
        self._unacked += flow
        self._readable.set()

    def _on_end(self) -> None:
        self._eof = True
        self._readable.set()
        if not self.response.done():
            self.response.set_exception(H2Error("HTTP/2 stream ended without a response"))

    def _fail(self, exc: BaseException) -> None:
        if self._error is None and not self._eof:
            self._error = exc
        self._readable.set()
        if not self.response.done():
            self.response.set_exception(exc)
            self.response.exception()  # retrieved: a failed flow may never await it

    async def status(self) -> int:
        headers = await self.response
        value = dict(headers).get(b":status", b"0")
        return int(value) if value.isdigit() else 0

    async def read(self, max_bytes: int = 65536) -> bytes:
        buf = self._buf
        while not buf:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            self._readable.clear()
            await self._readable.wait()
        out = take(buf, max_bytes)
        if self._unacked and len(buf) < self._session.window // 2 and not self._eof:
            n, self._unacked = self._unacked, 0
            self._session._ack(self.sid, n)
            await self._session.flush()
        return out

    async def write(self, data: bytes | bytearray | memoryview, end: bool = False) -> None:
        await self._session.send_body(self.sid, data, end, lambda: self._error)

    async def end(self) -> None:
        await self._session.end_stream(self.sid)

    def reset(self) -> None:
        self._session.reset_stream(self.sid)


class H2Session:
    """See the module docstring.  ``await start()`` before opening streams."""

    def __init__(self, inner: ByteStream, window: int = DEFAULT_WINDOW) -> None:
        self._inner = inner
        self.window = window
        self._h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self._streams: dict[int, H2Stream] = {}
        self._wlock = asyncio.Lock()
        self._send_window = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._closed = False

    async def start(self) -> None:
        conn = self._h2
        conn.initiate_connection()
        conn.update_settings(
            {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.window, h2.settings.SettingCodes.ENABLE_PUSH: 0}
        )
        if self.window > 65535:
            conn.increment_flow_control_window(self.window * 4 - 65535)
        await self.flush()
        self._pump = asyncio.get_running_loop().create_task(self._run_pump())

    def open(self, headers: list[tuple[bytes, bytes]], *, end_stream: bool = False, discard: bool = False) -> H2Stream:
        """Send a request's headers (synchronously queued; call :meth:`flush` or write)."""
        if self._error is not None:
            raise self._error
        sid = self._h2.get_next_available_stream_id()
        stream = H2Stream(self, sid, discard)
        self._streams[sid] = stream
        self._h2.send_headers(sid, headers, end_stream=end_stream)
        return stream

    # -- pump ----------------------------------------------------------------------------

    async def _run_pump(self) -> None:
        err: BaseException | None = None
        try:
            while True:
                data = await self._inner.read(READ_CHUNK)
                if not data:
                    err = H2Error("HTTP/2 connection closed by the server")
                    break
                self._handle(self._h2.receive_data(data))
                await self.flush()
        except asyncio.CancelledError:
            err = H2Error("HTTP/2 connection closed")
            raise
        except h2.exceptions.ProtocolError as exc:
            err = H2Error(f"HTTP/2 protocol error: {exc}")
        except (ConnectionError, OSError) as exc:
            err = exc
        finally:
            self._error = err or H2Error("HTTP/2 connection ended")
            for stream in list(self._streams.values()):
                stream._fail(self._error)
            self._send_window.set()

    def _handle(self, events: list[h2.events.Event]) -> None:
        streams = self._streams
        for ev in events:
            if isinstance(ev, h2.events.DataReceived):
                s = streams.get(ev.stream_id)
                if s is not None:
                    s._on_data(ev.data or b"", ev.flow_controlled_length)
                elif ev.flow_controlled_length:
                    self._ack(ev.stream_id, ev.flow_controlled_length)
            elif isinstance(ev, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                s = streams.get(ev.stream_id)
                if s is not None and isinstance(ev, h2.events.ResponseReceived):
                    s._on_headers(list(ev.headers or []))
            elif isinstance(ev, h2.events.StreamEnded):
                s = streams.get(ev.stream_id)
                if s is not None:
                    s._on_end()
            elif isinstance(ev, h2.events.StreamReset):
                s = streams.pop(ev.stream_id, None)
                if s is not None:
                    s._fail(H2Error(f"HTTP/2 stream reset by the server (code {ev.error_code})"))
                self._send_window.set()
            elif isinstance(ev, h2.events.ConnectionTerminated):
                last = ev.last_stream_id or 0
                for sid, s in list(streams.items()):
                    if ev.error_code or sid > last:
                        s._fail(H2Error(f"HTTP/2 GOAWAY from the server (code {ev.error_code})"))
                self._send_window.set()
            elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                self._send_window.set()

    def _ack(self, sid: int, n: int) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self._h2.acknowledge_received_data(n, sid)

    async def flush(self) -> None:
        async with self._wlock:
            out = self._h2.data_to_send()
            if out:
                await self._inner.write(out)

    async def send_body(
        self, sid: int, data: bytes | bytearray | memoryview, end: bool, stream_error: Any = lambda: None
    ) -> None:
        view = memoryview(data)
        pos, total = 0, len(view)
        conn = self._h2
        while pos < total:
            err = stream_error() or self._error
            if err is not None:
                raise err
            try:
                sent = queue_data(conn, sid, view, pos, end)
            except h2.exceptions.StreamClosedError:
                raise H2Error("HTTP/2 stream closed by the server") from None
            if sent == pos:
                self._send_window.clear()
                await self._send_window.wait()
                continue
            pos = sent
            await self.flush()
        if end and total == 0:
            await self.end_stream(sid)

    async def end_stream(self, sid: int) -> None:
        if self._error is not None:
            return
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self._h2.end_stream(sid)
        await self.flush()

    def reset_stream(self, sid: int) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self._h2.reset_stream(sid)
        self._streams.pop(sid, None)

    def forget(self, sid: int) -> None:
        self._streams.pop(sid, None)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        try:
            self._h2.close_connection()
            out = self._h2.data_to_send()
            if out:
                await self._inner.write(out)
        except (ConnectionError, OSError, h2.exceptions.ProtocolError):
            pass
        finally:
            await self._inner.aclose()

    def abort(self) -> None:
        self._closed = True
        if self._pump is not None:
            self._pump.cancel()
        self._inner.abort()
        for stream in list(self._streams.values()):
            stream._on_end()  # a reader waiting here wakes with b"" (own abort, not the peer's)
