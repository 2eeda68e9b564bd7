"""XHTTP over HTTP/1.1 (``tlsSettings.alpn: ["http/1.1"]``), on ``h11``.

HTTP/1.1 carries one request at a time per connection, so, as Xray's HTTP/1.1 client:

* ``stream-one``: one connection, one ``POST {path}`` with a chunked body (uplink)
  whose response body is the downlink (both directions at once on the connection).
* ``stream-up``: the flow's connection carries ``GET {path}{session}`` (downlink); a
  second connection (the layer's ``redial``) carries the chunked ``POST {path}{session}``.
* ``packet-up``: the GET as above; uploads go one ``POST {path}{session}/{seq}`` after
  another over a second, keep-alive connection, each answered (200) before the next
  is sent; a closed keep-alive connection is replaced by a new one.

Request targets, headers (``Referer`` padding, ``Content-Type: application/grpc`` on
streaming POSTs) and packet batching come from :mod:`tunray_transports.xhttpframe`.
A response other than 200, or a connection ending inside a response, resets the flow
(:class:`~tunray_transports.h2session.H2Error` is reused: it is a ``StreamReset``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import h11
from tunray.bytestream import ByteStream, StreamReset

from tunray_transports.h2session import H2Error
from tunray_transports.xhttpframe import (
    PacketBatcher,
    XhttpOptions,
    new_session_id,
    request_headers,
    request_target,
)
from tunray_transports.xhttpstream import XhttpStreamBase

READ_CHUNK = 256 * 1024
Redial = Callable[[], Awaitable[ByteStream]]


def _h1(headers: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]]:
    """HTTP/2-style header block -> (method, target, HTTP/1.1 headers with Host first)."""
    pseudo = {k: v for k, v in headers if k.startswith(b":")}
    rest = [(k, v) for k, v in headers if not k.startswith(b":")]
    return pseudo[b":method"], pseudo[b":path"], [(b"host", pseudo[b":authority"]), *rest]


class H1Client:
    """One HTTP/1.1 connection driven through ``h11`` (requests in sequence)."""

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)

    async def request(self, headers: list[tuple[bytes, bytes]], *, chunked: bool = False, body: bytes | None = None) -> None:
        method, target, fields = _h1(headers)
        if chunked:
            fields.append((b"transfer-encoding", b"chunked"))
        elif body is not None and not any(k == b"content-length" for k, _ in fields):
            fields.append((b"content-length", str(len(body)).encode()))
        out = self.conn.send(h11.Request(method=method, target=target, headers=fields)) or b""
        if body is not None:
            out += (self.conn.send(h11.Data(data=body)) or b"") if body else b""
            out += self.conn.send(h11.EndOfMessage()) or b""
        elif method == b"GET":
            out += self.conn.send(h11.EndOfMessage()) or b""
        await self.stream.write(out)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.write(self.conn.send(h11.Data(data=bytes(data))) or b"")

    async def end(self) -> None:
        if self.conn.our_state is h11.SEND_BODY:
            await self.stream.write(self.conn.send(h11.EndOfMessage()) or b"")

    async def next_event(self) -> h11.Event | type[h11.PAUSED] | type[h11.NEED_DATA]:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise H2Error(f"XHTTP: bad HTTP/1.1 from the server: {exc}") from None
            if event is not h11.NEED_DATA:
                return event
            data = await self.stream.read(READ_CHUNK)
            self.conn.receive_data(data)  # b"" marks the end of the connection

    async def response(self) -> int:
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Response):
                return int(event.status_code)
            if isinstance(event, h11.ConnectionClosed):
                raise H2Error("XHTTP: the server closed the connection without a response")
            if not isinstance(event, h11.InformationalResponse):
                raise H2Error(f"XHTTP: unexpected HTTP/1.1 event {type(event).__name__}")

    async def body(self) -> bytes:
        """The next piece of the response body; ``b""`` at its end."""
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Data):
                if event.data:
                    return bytes(event.data)
                continue
            if isinstance(event, h11.EndOfMessage):
                return b""
            raise H2Error("XHTTP: the server closed the connection inside a response")

    async def drain(self) -> None:
        while await self.body():
            pass

    def reusable(self) -> bool:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            return True
        return False


class XhttpH1Stream(XhttpStreamBase[H1Client]):
    """A :class:`~tunray.bytestream.ByteStream` over XHTTP on HTTP/1.1; see the module docstring.

    Writes, half-close and the packet-up uploader are :class:`~tunray_transports.xhttpstream.XhttpStreamBase`'s;
    here: the downlink, and a packet-up POST over the keep-alive upload connection.
    """

    def __init__(
        self,
        down: H1Client,
        up: H1Client | None,
        batcher: PacketBatcher | None = None,
        post: tuple[Redial, XhttpOptions, str, str, random.Random] | None = None,
    ) -> None:
        self._down = down
        self._checked = False
        self._post = post  # packet-up: (redial, options, session id, authority, rng)
        self._client: H1Client | None = None  # packet-up: the keep-alive upload connection
        super().__init__(up, batcher, 2 * post[1].max_post.hi if post is not None else 0)

    async def read(self, max_bytes: int = 65536) -> bytes:
        if self._closed:
            return b""
        try:
            if not self._checked:
                status = await self._down.response()
                if status != 200:
                    raise H2Error(f"XHTTP: the server answered the download with HTTP {status}")
                self._checked = True
            if self._error is not None:
                raise self._error
            return await self._down.body()
        except StreamReset:
            if self._closed:
                return b""
            raise

    def _wake_reader(self, exc: BaseException) -> None:
        self._down.stream.abort()  # wakes a waiting read, which then raises

    async def _drain_stream_up(self) -> None:
        up = self._up
        assert up is not None
        try:
            status = await up.response()
            if status != 200:
                raise H2Error(f"XHTTP: the server answered the upload with HTTP {status}")
            await up.drain()
        except (ConnectionError, OSError) as exc:
            if not self._closed:
                self._fail(exc)

    async def _send_post(self, seq: int, body: bytes) -> None:
        assert self._post is not None
        redial, opts, session, authority, rng = self._post
        if self._client is None:
            self._client = H1Client(await redial())
        client = self._client
        target = request_target(opts, session, seq)
        await client.request(request_headers(opts, "POST", target, authority, rng), body=body)
        status = await client.response()
        if status != 200:
            raise H2Error(f"XHTTP: the server answered an upload POST with HTTP {status}")
        await client.drain()
        if not client.reusable():
            client.stream.abort()
            self._client = None

    def _upload_ended(self) -> None:
        if self._client is not None:
            self._client.stream.abort()
            self._client = None

    def _abort_connections(self) -> None:
        self._down.stream.abort()
        if self._up is not None and self._up is not self._down:
            self._up.stream.abort()

    async def _close_connections(self) -> None:
        if self._up is not None and self._up is not self._down:
            await self._up.stream.aclose()
        await self._down.stream.aclose()


async def open_xhttp1(inner: ByteStream, opts: XhttpOptions, mode: str, authority: str, redial: Redial) -> XhttpH1Stream:
    rng = random.Random()
    down = H1Client(inner)
    if mode == "stream-one":
        await down.request(request_headers(opts, "POST", request_target(opts), authority, rng, streaming_body=True), chunked=True)
        return XhttpH1Stream(down, down)
    session = new_session_id()
    await down.request(request_headers(opts, "GET", request_target(opts, session), authority, rng))
    if mode == "stream-up":
        up = H1Client(await redial())
        try:
            headers = request_headers(opts, "POST", request_target(opts, session), authority, rng, streaming_body=True)
            await up.request(headers, chunked=True)
        except BaseException:
            up.stream.abort()
            raise
        stream = XhttpH1Stream(down, up)
        stream._tasks.append(asyncio.get_running_loop().create_task(stream._drain_stream_up()))
        return stream
    batcher = PacketBatcher(opts.max_post, opts.min_interval_ms, rng)
    return XhttpH1Stream(down, None, batcher, (redial, opts, session, authority, rng))
