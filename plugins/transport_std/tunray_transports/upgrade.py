"""HTTPUpgrade: an HTTP/1.1 ``Upgrade: websocket`` request, then raw bytes both ways.

Xray's ``httpupgrade`` looks like a WebSocket opening handshake to a CDN but carries no
WebSocket framing afterwards.  Without early data (``?ed=`` absent) ``wrap`` waits for
the ``101``; with it, the request goes out and ``wrap`` returns at once, so the first
write follows the request on the wire and the response is parsed by the first read
(Xray's 0-RTT behaviour).  Half-close is TCP's own: ``write_eof`` passes through.
"""

from __future__ import annotations

import asyncio
import os

from tunray.bytestream import ByteStream

from tunray_transports.http1 import HandshakeError, ResponseReader, build_request, check_upgrade, ws_key
from tunray_transports.settings import HttpOptions


async def read_head(inner: ByteStream, reader: ResponseReader, accept: str | None) -> bytes:
    """Read the response head from *inner*; check it; return the bytes after it."""
    while True:
        data = await inner.read(65536)
        if not data:
            raise HandshakeError("connection closed before the HTTP upgrade response")
        head = reader.feed(data)
        if head is not None:
            check_upgrade(head, accept)
            return reader.leftover


def upgrade_request(
    opts: HttpOptions, host: str, extra: tuple[tuple[str, str], ...] = (), *, websocket: bool = True
) -> tuple[bytes, str]:
    """The request bytes and the ``Sec-WebSocket-Key`` they carry ("" for HTTPUpgrade).

    HTTPUpgrade sends no ``Sec-WebSocket-Key``/``-Version`` unless configured in
    ``headers``: sing-box's server refuses such a request as "real websocket", and
    Xray's server does not need them.
    """
    key = ws_key(os.urandom(16)) if websocket else ""
    ws_headers = (("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")) if websocket else ()
    headers = (("Connection", "Upgrade"), ("Upgrade", "websocket"), *ws_headers, *extra, *opts.headers)
    return build_request(opts.path, host, headers), key


class UpgradedStream(ByteStream):
    """The raw stream after an HTTP upgrade; SocketStream-shaped."""

    __slots__ = ("_inner", "_leftover", "_pending", "_read_lock")

    def __init__(self, inner: ByteStream, leftover: bytes, pending: ResponseReader | None) -> None:
        self._inner = inner
        self._leftover = leftover
        self._pending = pending  # response still to be read (early-data mode)
        self._read_lock = asyncio.Lock()

    async def read(self, max_bytes: int = 65536) -> bytes:
        if self._pending is not None:
            async with self._read_lock:
                if self._pending is not None:
                    self._leftover = await read_head(self._inner, self._pending, None)
                    self._pending = None
        if self._leftover:
            head, self._leftover = self._leftover[:max_bytes], self._leftover[max_bytes:]
            return head
        data: bytes = await self._inner.read(max_bytes)
        return data

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.write(data)

    async def write_eof(self) -> None:
        await self._inner.write_eof()

    async def aclose(self) -> None:
        await self._inner.aclose()

    def abort(self) -> None:
        self._inner.abort()


async def open_httpupgrade(inner: ByteStream, opts: HttpOptions, host: str) -> UpgradedStream:
    request, _ = upgrade_request(opts, host, websocket=False)
    await inner.write(request)
    reader = ResponseReader()
    if opts.early_data > 0:
        return UpgradedStream(inner, b"", reader)
    leftover = await read_head(inner, reader, None)
    return UpgradedStream(inner, leftover, None)
