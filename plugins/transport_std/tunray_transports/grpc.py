"""gRPC ("gun") stream: one HTTP/2 stream carrying Hunk messages, over our inner stream.

Theory of operation.  ``h2`` is the sans-IO HTTP/2 state machine; this module is its
asyncio adapter.  ``open_grpc`` sends the connection preface, our SETTINGS (a larger
receive window), and the request headers (``POST /<service>/Tun``, ``content-type:
application/grpc``, ``te: trailers``) and returns without waiting for the response,
as grpc-go does: the first data follows the headers at once.

One pump task owns the inner stream's read side: it feeds ``h2``, turns DATA into
payload bytes (:class:`~tunray_transports.grpcframe.MessageReader`), wakes readers and
writers, and sends what ``h2`` wants sent (SETTINGS ACK, PING ACK, WINDOW_UPDATE).
Every write to the inner stream takes ``data_to_send()`` and writes it under one lock,
so frames keep ``h2``'s order.  Flow control: writers wait while the stream's send
window is empty; received bytes are acknowledged only when the application reads
them, so the server can never have more than one window (default 1 MiB) buffered
here.  ``write_eof`` sends nothing (``half_close = False``), as Xray's client: Xray's
gRPC server ends the whole tunnel when the request stream ends (END_STREAM), dropping
the response still to come, so a half-closing app would lose its reply; the flow ends
when the downlink ends or by the relay's timers, as over WebSocket.  ``aclose`` sends
GOAWAY and closes the inner stream; ``abort`` drops it.

Ends (the :class:`~tunray.bytestream.ByteStream` contract).  The server ending its
response (DATA, then END_STREAM, with trailers ``grpc-status: 0``) is EOF: every byte
is read, then ``b""``.  A server that ends first commonly follows with RST_STREAM
NO_ERROR ("stop sending", RFC 9113 §8.1; grpc-go does it): after END_STREAM that is
still an orderly end, and only a later ``write`` fails, as a TCP peer that closed
would answer more data with a RST.  A reset is: RST_STREAM with an error code, or
NO_ERROR before END_STREAM; ``grpc-status`` other than 0; a GOAWAY that drops the
stream; the connection closing or resetting under an unfinished stream.  Bytes that
arrived before a reset are read first, then :class:`GrpcError` (a
:class:`~tunray.bytestream.StreamReset`) is raised.

With ``idle_timeout`` the pump sends a PING after that many idle seconds and fails the
stream if nothing arrives within ``health_check_timeout`` (default 20 s), like grpc-go's
client keepalive.  Xray shares one HTTP/2 connection among flows; tunray's layer
contract gives each flow its own inner stream, so each flow is one connection here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from tunray.bytestream import ByteStream, StreamClosed, StreamReset

from tunray_transports.grpcframe import GrpcFramingError, MessageReader, encode_hunks
from tunray_transports.h2flow import queue_data, take
from tunray_transports.settings import GrpcOptions

READ_CHUNK = 256 * 1024
DEFAULT_HEALTH_TIMEOUT = 20


class GrpcError(StreamReset):
    """The gRPC call failed (HTTP status, grpc-status, RST_STREAM or GOAWAY)."""


def request_headers(opts: GrpcOptions, authority: str) -> list[tuple[bytes, bytes]]:
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"http"),  # grpc-go says http when TLS is below it as insecure creds
        (b":path", opts.method_path.encode()),
        (b":authority", authority.encode()),
        (b"content-type", b"application/grpc"),
    ]
    if opts.user_agent:
        headers.append((b"user-agent", opts.user_agent.encode()))
    headers.append((b"te", b"trailers"))
    return headers


def _status_error(headers: list[tuple[bytes, bytes]], trailers: bool) -> GrpcError | None:
    h = dict(headers)
    if not trailers:
        status = h.get(b":status", b"")
        if status != b"200":
            return GrpcError(f"gRPC server answered HTTP {status.decode(errors='replace')}")
        ctype = h.get(b"content-type", b"")
        if not ctype.startswith(b"application/grpc"):
            return GrpcError(f"gRPC server answered content-type {ctype.decode(errors='replace')!r}")
    code = h.get(b"grpc-status")
    if code is not None and code != b"0":
        msg = h.get(b"grpc-message", b"").decode(errors="replace")
        return GrpcError(f"gRPC status {code.decode(errors='replace')}: {msg}")
    return None


class GrpcStream(ByteStream):
    """gRPC tunnel stream; build with :func:`open_grpc`."""

    half_close = False

    __slots__ = (
        "_closed",
        "_end_error",
        "_eof",
        "_error",
        "_h2",
        "_inner",
        "_opts",
        "_pump",
        "_rbuf",
        "_readable",
        "_reader",
        "_remote_ended",
        "_sid",
        "_unacked",
        "_window",
        "_wlock",
    )

    def __init__(self, inner: ByteStream, opts: GrpcOptions) -> None:
        self._inner = inner
        self._opts = opts
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self._h2 = h2.connection.H2Connection(config=config)
        self._sid = 0
        self._reader = MessageReader()
        self._rbuf = bytearray()
        self._unacked = 0
        self._eof = False
        self._end_error: BaseException | None = None  # raised once the buffer is drained
        self._error: BaseException | None = None  # raised at once
        self._remote_ended = False  # END_STREAM received: the response is complete
        self._closed = False
        self._readable = asyncio.Event()
        self._window = asyncio.Event()
        self._wlock = asyncio.Lock()
        self._pump: asyncio.Task[None] | None = None

    async def start(self, authority: str) -> None:
        conn = self._h2
        conn.initiate_connection()
        window = self._opts.window
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        if window > 65535:
            conn.increment_flow_control_window(window - 65535)
        self._sid = conn.get_next_available_stream_id()
        conn.send_headers(self._sid, request_headers(self._opts, authority))
        await self._flush()
        self._pump = asyncio.get_running_loop().create_task(self._run_pump())

    # -- pump ---------------------------------------------------------------------

    async def _next_chunk(self) -> bytes:
        idle = self._opts.idle_timeout
        if idle <= 0:
            data: bytes = await self._inner.read(READ_CHUNK)
            return data
        try:
            async with asyncio.timeout(idle):
                data = await self._inner.read(READ_CHUNK)
                return data
        except TimeoutError:
            pass
        self._h2.ping(os.urandom(8))
        await self._flush()
        try:
            async with asyncio.timeout(self._opts.health_check_timeout or DEFAULT_HEALTH_TIMEOUT):
                data = await self._inner.read(READ_CHUNK)
                return data
        except TimeoutError:
            raise GrpcError("gRPC keepalive: no answer to PING") from None

    async def _run_pump(self) -> None:
        try:
            while True:
                data = await self._next_chunk()
                if not data:
                    if not self._remote_ended and self._end_error is None:
                        self._error = GrpcError("connection closed in the middle of the gRPC stream")
                    break
                self._handle(self._h2.receive_data(data))
                await self._flush()
        except asyncio.CancelledError:
            raise
        except (h2.exceptions.ProtocolError, GrpcFramingError) as exc:
            self._error = GrpcError(f"gRPC/HTTP2 protocol error: {exc}")
        except StreamReset as exc:
            if not self._remote_ended:
                self._error = GrpcError(f"the connection under the gRPC stream was reset: {exc}")
        except (ConnectionError, OSError) as exc:
            if not self._remote_ended:
                self._error = GrpcError(f"the connection under the gRPC stream failed: {exc}")
        finally:
            self._eof = True
            self._readable.set()
            self._window.set()

    def _handle(self, events: list[h2.events.Event]) -> None:
        sid = self._sid
        for ev in events:
            if isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                self._unacked += ev.flow_controlled_length
                if ev.data:
                    for chunk in self._reader.feed(ev.data):
                        self._rbuf += chunk
                    self._readable.set()
            elif (
                isinstance(ev, (h2.events.ResponseReceived, h2.events.TrailersReceived))
                and ev.stream_id == sid
            ):
                err = _status_error(ev.headers or [], isinstance(ev, h2.events.TrailersReceived))
                if err is not None:
                    self._end_error = err
                    self._eof = True
                    self._readable.set()
            elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                self._eof = True
                self._remote_ended = True
                self._readable.set()
            elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                if not (self._remote_ended and ev.error_code == h2.errors.ErrorCodes.NO_ERROR):
                    self._error = GrpcError(f"gRPC stream reset by the server (code {ev.error_code})")
                self._readable.set()
                self._window.set()
            elif isinstance(ev, h2.events.ConnectionTerminated):
                if ev.error_code or (ev.last_stream_id is not None and ev.last_stream_id < sid):
                    self._error = GrpcError(f"HTTP/2 GOAWAY from the server (code {ev.error_code})")
                    self._readable.set()
                self._window.set()
            elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                self._window.set()

    async def _flush(self) -> None:
        async with self._wlock:
            out = self._h2.data_to_send()
            if out:
                await self._inner.write(out)

    # -- stream shape -----------------------------------------------------------------

    async def read(self, max_bytes: int = 65536) -> bytes:
        rbuf = self._rbuf
        if self._closed:
            return b""
        while not rbuf:
            if self._closed:
                return b""
            if self._error is not None:
                raise self._error
            if self._eof:
                if self._end_error is not None:
                    raise self._end_error
                return b""
            self._readable.clear()
            await self._readable.wait()
        out = take(rbuf, max_bytes)
        if self._unacked and len(rbuf) < self._opts.window // 2 and self._error is None:
            n, self._unacked = self._unacked, 0
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self._h2.acknowledge_received_data(n, self._sid)
            if not self._eof:
                await self._flush()
        return out

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise StreamClosed("gRPC stream closed for writing")
        payload = encode_hunks(data)
        view = memoryview(payload)
        pos, total = 0, len(payload)
        conn, sid = self._h2, self._sid
        while pos < total:
            if self._error is not None:
                raise self._error
            try:
                sent = queue_data(conn, sid, view, pos, False)
            except h2.exceptions.StreamClosedError:
                raise GrpcError("gRPC stream closed by the server") from None
            if sent == pos:
                if self._pump is None or self._pump.done():
                    raise GrpcError("gRPC connection closed while waiting for the send window")
                self._window.clear()
                await self._window.wait()
                continue
            pos = sent
            await self._flush()

    async def write_eof(self) -> None:
        """No half-close over gRPC (see the module docstring); later writes still go out."""

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._readable.set()
        self._window.set()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        try:
            if not self._wlock.locked() and self._error is None:
                with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                    self._h2.end_stream(self._sid)  # the call's clean end (grpc-go's CloseSend)
                self._h2.close_connection()
                await self._flush()
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        finally:
            await self._inner.aclose()

    def abort(self) -> None:
        self._closed = True
        if self._pump is not None:
            self._pump.cancel()
        self._readable.set()
        self._window.set()
        self._inner.abort()


async def open_grpc(inner: ByteStream, opts: GrpcOptions, authority: str) -> GrpcStream:
    stream = GrpcStream(inner, opts)
    await stream.start(authority)
    return stream
