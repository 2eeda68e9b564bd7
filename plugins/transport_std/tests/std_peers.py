"""Server ends of the three transports as :class:`~tunray.bytestream.ByteStream`\\ s, for ``check_byte_stream``.

Each wraps the server's :class:`~tunray.net.stream.SocketStream` of a loopback pair:
:func:`accept_httpupgrade` answers the upgrade and hands back the socket stream itself;
:class:`WsServerStream` frames with :mod:`tunray_transports.wsframe` (unmasked, as a
server must); :class:`GrpcServerStream` is ``h2`` in server mode carrying Hunk
messages.  They follow the same contract as the clients, so the suite can check the
clients' EOF and reset handling in both directions.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from tunray.bytestream import ByteStream, StreamClosed, StreamReset
from tunray_transports.grpcframe import MessageReader, encode_hunks
from tunray_transports.http1 import ws_accept
from tunray_transports.wsframe import Close, CloseCode, Data, FrameReader, Opcode, Ping, encode_frame


async def read_request_head(inner: ByteStream) -> dict[str, str]:
    """Read an HTTP/1.1 request head; return its headers (lower-case names)."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await inner.read(4096)
        if not chunk:
            raise ConnectionError("client closed before the request head")
        head += chunk
    text, _, rest = head.partition(b"\r\n\r\n")
    assert not rest, "the client sent data before the 101"
    headers = {}
    for line in text.decode().split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers


async def accept_httpupgrade(inner: ByteStream) -> ByteStream:
    await read_request_head(inner)
    await inner.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    return inner


class WsServerStream(ByteStream):
    half_close = False

    def __init__(self, inner: ByteStream) -> None:
        self._inner = inner
        self._reader = FrameReader(accept_masked=True)
        self._buf = bytearray()
        self._eof = False
        self._closed = False
        self._close_sent = False

    @classmethod
    async def accept(cls, inner: ByteStream) -> WsServerStream:
        headers = await read_request_head(inner)
        accept = ws_accept(headers["sec-websocket-key"])
        await inner.write(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            + f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
        )
        return cls(inner)

    async def read(self, max_bytes: int = 65536) -> bytes:
        while not self._buf:
            if self._closed or self._eof:
                return b""
            data = await self._inner.read(1 << 18)
            if not data:
                self._eof = True
                return b""
            for ev in self._reader.feed(data):
                if isinstance(ev, Data):
                    self._buf += ev.payload
                elif isinstance(ev, Ping):
                    await self._inner.write(encode_frame(Opcode.PONG, ev.payload, None))
                elif isinstance(ev, Close):
                    self._eof = True
                    await self._send_close()
        out = bytes(self._buf[:max_bytes])
        del self._buf[:max_bytes]
        return out

    async def _send_close(self) -> None:
        if not self._close_sent:
            self._close_sent = True
            with contextlib.suppress(ConnectionError):
                await self._inner.write(encode_frame(Opcode.CLOSE, struct.pack("!H", CloseCode.NORMAL), None))

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed or self._close_sent:
            raise StreamClosed("closed")
        await self._inner.write(encode_frame(Opcode.BINARY, data, None))

    async def write_eof(self) -> None:
        pass

    def abort(self) -> None:
        self._closed = True
        self._inner.abort()

    async def aclose(self) -> None:
        if self._closed:
            return
        await self._send_close()
        self._closed = True
        await self._inner.aclose()


class GrpcServerStream(ByteStream):
    """One gRPC ``Tun`` call, server side; ``write_eof``/``aclose`` end it with trailers (status 0)."""

    def __init__(self, inner: ByteStream) -> None:
        self._inner = inner
        self._h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self._sid = 0
        self._messages = MessageReader()
        self._buf = bytearray()
        self._unacked = 0
        self._eof = False
        self._ended = False
        self._closed = False
        self._error: StreamReset | None = None
        self._readable = asyncio.Event()
        self._window = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None

    @classmethod
    async def accept(cls, inner: ByteStream) -> GrpcServerStream:
        self = cls(inner)
        self._h2.initiate_connection()
        await self._flush()
        while not self._sid:
            data = await inner.read(65536)
            if not data:
                raise ConnectionError("client closed before its request")
            self._handle(self._h2.receive_data(data))
            await self._flush()
        self._pump = asyncio.ensure_future(self._run())
        return self

    def _handle(self, events: list[h2.events.Event]) -> None:
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived) and ev.stream_id is not None:
                self._sid = ev.stream_id
                self._h2.send_headers(self._sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
            elif isinstance(ev, h2.events.DataReceived):
                self._unacked += ev.flow_controlled_length
                for chunk in self._messages.feed(ev.data or b""):
                    self._buf += chunk
                self._readable.set()
            elif isinstance(ev, h2.events.StreamEnded):
                self._eof = True
                self._readable.set()
            elif isinstance(ev, h2.events.StreamReset):
                self._error = StreamReset(f"RST_STREAM {ev.error_code}")
                self._readable.set()
                self._window.set()
            elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                self._window.set()

    async def _flush(self) -> None:
        out = self._h2.data_to_send()
        if out:
            await self._inner.write(out)

    async def _run(self) -> None:
        try:
            while True:
                data = await self._inner.read(1 << 18)
                if not data:
                    if not self._eof:
                        self._error = StreamReset("connection closed under the stream")
                    return
                self._handle(self._h2.receive_data(data))
                await self._flush()
        except StreamReset as exc:
            if not self._eof:
                self._error = exc
        except ConnectionError:
            pass
        finally:
            self._readable.set()
            self._window.set()

    async def read(self, max_bytes: int = 65536) -> bytes:
        while not self._buf:
            if self._closed:
                return b""
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            self._readable.clear()
            await self._readable.wait()
        out = bytes(self._buf[:max_bytes])
        del self._buf[:max_bytes]
        if self._unacked and not self._eof:
            n, self._unacked = self._unacked, 0
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self._h2.acknowledge_received_data(n, self._sid)
                await self._flush()
        return out

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed or self._ended:
            raise StreamClosed("closed")
        payload = memoryview(encode_hunks(data))
        pos = 0
        while pos < len(payload):
            if self._error is not None:
                raise self._error
            window = self._h2.local_flow_control_window(self._sid)
            if window <= 0:
                self._window.clear()
                await self._window.wait()
                continue
            n = min(window, self._h2.max_outbound_frame_size, len(payload) - pos)
            self._h2.send_data(self._sid, bytes(payload[pos : pos + n]))
            pos += n
            await self._flush()

    async def write_eof(self) -> None:
        if self._ended or self._closed or self._error is not None:
            return
        self._ended = True
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self._h2.send_headers(self._sid, [(b"grpc-status", b"0")], end_stream=True)
        with contextlib.suppress(ConnectionError):
            await self._flush()

    def abort(self) -> None:
        self._closed = True
        if self._pump is not None:
            self._pump.cancel()
        self._readable.set()
        self._inner.abort()

    async def aclose(self) -> None:
        if self._closed:
            return
        await self.write_eof()
        self._closed = True
        self._readable.set()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        await self._inner.aclose()
