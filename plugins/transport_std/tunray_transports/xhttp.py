"""The XHTTP transport stream: the asyncio side of :mod:`tunray_transports.xhttpframe` over HTTP/2.

One :class:`~tunray_transports.h2session.H2Session` per tunnelled connection carries
every request of that connection (Xray's ``xmux`` shares connections between flows;
tunray's layer contract gives each flow its own inner stream).  ``read`` returns the
downlink response body after checking its status is 200; ``write`` sends the uplink
as the streaming POST body (stream-one, stream-up) or queues it for packet-up's
uploader task, which sends one POST per batch and fails the stream if a POST is
answered with anything but 200.  ``write_eof`` ends the streaming POST (a real
half-close); packet-up has no way to say it, so the queued bytes are sent and nothing
more.  A reset of any of the connection's streams resets the flow.  The uplink side
(write, half-close, the uploader's pacing) is shared with HTTP/1.1 in
:mod:`tunray_transports.xhttpstream`.
"""

from __future__ import annotations

import asyncio
import random

from tunray.bytestream import ByteStream, StreamReset

from tunray_transports.h2session import H2Error, H2Session, H2Stream
from tunray_transports.xhttpframe import (
    PacketBatcher,
    XhttpOptions,
    new_session_id,
    request_headers,
    request_target,
)
from tunray_transports.xhttpstream import XhttpStreamBase


class XhttpStream(XhttpStreamBase[H2Stream]):
    """A :class:`~tunray.bytestream.ByteStream` over XHTTP on HTTP/2; build with :func:`open_xhttp`.

    Writes, half-close and the packet-up uploader are :class:`~tunray_transports.xhttpstream.XhttpStreamBase`'s;
    here: the downlink, and a packet-up POST as one more stream of the session.
    """

    def __init__(
        self,
        session: H2Session,
        down: H2Stream,
        up: H2Stream | None,
        batcher: PacketBatcher | None = None,
        post: tuple[XhttpOptions, str, str, random.Random] | None = None,
    ) -> None:
        self._session = session
        self._down = down
        self._checked = False
        self._post = post  # packet-up: (options, session id, authority, rng)
        super().__init__(up, batcher, 2 * post[0].max_post.hi if post is not None else 0)

    async def read(self, max_bytes: int = 65536) -> bytes:
        if self._closed:
            return b""
        if not self._checked:
            status = await self._down.status()
            if status != 200:
                raise H2Error(f"XHTTP: the server answered the download with HTTP {status}")
            self._checked = True
        if self._error is not None:
            raise self._error
        try:
            data = await self._down.read(max_bytes)
        except StreamReset:
            if self._closed:
                return b""  # our own aclose/abort ended the connection under a waiting read
            raise
        return b"" if self._closed else data

    def _wake_reader(self, exc: BaseException) -> None:
        self._down._fail(exc)

    async def _send_post(self, seq: int, body: bytes) -> None:
        assert self._post is not None
        opts, session_id, authority, rng = self._post
        target = request_target(opts, session_id, seq)
        headers = request_headers(opts, "POST", target, authority, rng, content_length=len(body))
        stream = self._session.open(headers)
        self._watch(stream)
        await stream.write(body, end=True)

    def _watch(self, post: H2Stream) -> None:
        """Fail the flow if this upload POST is answered with anything but 200."""

        def check(fut: asyncio.Future[list[tuple[bytes, bytes]]]) -> None:
            self._check_post(fut, post.sid)

        post.response.add_done_callback(check)

    def _check_post(self, fut: asyncio.Future[list[tuple[bytes, bytes]]], sid: int) -> None:
        if self._up is None:
            self._session.forget(sid)  # packet-up: its empty response body is acknowledged without a reader
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            self._fail(exc)
            return
        status = dict(fut.result()).get(b":status", b"")
        if status != b"200":
            self._fail(H2Error(f"XHTTP: the server answered an upload POST with HTTP {status.decode(errors='replace')}"))

    def _abort_connections(self) -> None:
        self._session.abort()

    async def _close_connections(self) -> None:
        await self._session.aclose()


async def open_xhttp(inner: ByteStream, opts: XhttpOptions, mode: str, authority: str) -> XhttpStream:
    """Start the requests of *mode* over *inner* (which must speak HTTP/2); no response is awaited."""
    rng = random.Random()
    session = H2Session(inner)
    await session.start()
    if mode == "stream-one":
        up = session.open(request_headers(opts, "POST", request_target(opts), authority, rng, streaming_body=True))
        await session.flush()
        return XhttpStream(session, up, up)
    session_id = new_session_id()
    down = session.open(request_headers(opts, "GET", request_target(opts, session_id), authority, rng), end_stream=True)
    if mode == "stream-up":
        headers = request_headers(opts, "POST", request_target(opts, session_id), authority, rng, streaming_body=True)
        up_stream = session.open(headers, discard=True)
        await session.flush()
        stream = XhttpStream(session, down, up_stream)
        stream._watch(up_stream)
        return stream
    await session.flush()
    batcher = PacketBatcher(opts.max_post, opts.min_interval_ms, rng)
    return XhttpStream(session, down, None, batcher, (opts, session_id, authority, rng))
