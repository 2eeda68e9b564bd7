"""Xray's raw-TCP HTTP header obfuscation (``rawSettings.header.type: "http"``), client side.

The client writes one HTTP/1.x request head before its first bytes and, before its
first read, consumes the server's response head (everything up to the first
``CRLF CRLF``, at most 8192 bytes); after that the connection carries the protocol
unchanged.  The request head, as Xray forms it::

    <method> <one of path> HTTP/<version>\\r\\n
    <Name>: <one of the values>\\r\\n      (each header, names in sorted order when configured)
    \\r\\n

Defaults (Xray infra/conf ``AuthenticatorRequest``): ``GET``, ``1.1``, path ``/`` and a
browser-like header set.  A choice among several values is random per connection.
The header sits above TLS (inside it) when both are configured, as in Xray's dialer.
"""

from __future__ import annotations

import random
from typing import Any

from tunray.config.schema import Settings
from tunray.net.address import Destination
from tunray.transport import Layer

MAX_HEADER = 8192
ENDING = b"\r\n\r\n"
CHROME_UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/135.0.0.0 Safari/537.36"
DEFAULT_HEADERS: list[tuple[str, list[str]]] = [
    ("Host", ["www.baidu.com", "www.bing.com"]),
    ("User-Agent", [CHROME_UA]),
    ("Sec-CH-UA", ['"Chromium";v="135", "Not-A.Brand";v="8", "Google Chrome";v="135"']),
    ("Sec-CH-UA-Mobile", ["?0"]),
    ("Sec-CH-UA-Platform", ["Windows"]),
    ("Sec-Fetch-Mode", ["no-cors", "cors", "same-origin"]),
    ("Sec-Fetch-Dest", ["empty"]),
    ("Sec-Fetch-Site", ["none"]),
    ("Sec-Fetch-User", ["?1"]),
    ("Accept-Encoding", ["gzip, deflate"]),
    ("Connection", ["keep-alive"]),
    ("Pragma", ["no-cache"]),
]


class RequestHead:
    """The configured request; :meth:`render` picks the random choices for one connection."""

    def __init__(self, request: Any) -> None:
        self.method = (request.method if request is not None else "") or "GET"
        self.version = (request.version if request is not None else "") or "1.1"
        paths = request.path if request is not None else None
        self.paths: list[str] = list(paths or ["/"])
        headers = request.headers if request is not None else None
        if headers:
            self.headers = [(name, list(headers[name])) for name in sorted(headers)]
        else:
            self.headers = DEFAULT_HEADERS

    def render(self, rng: random.Random | None = None) -> bytes:
        pick = (rng or random).choice
        lines = [f"{self.method} {pick(self.paths)} HTTP/{self.version}"]
        lines += [f"{name}: {pick(values) if values else ''}" for name, values in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def skip_response(buf: bytes) -> int | None:
    """Bytes of *buf* taken by a complete response head, or None if more is needed.

    Raises ``ConnectionError`` when no head ends within :data:`MAX_HEADER` bytes.
    """
    end = buf.find(ENDING)
    if end >= 0:
        return end + len(ENDING)
    if len(buf) > MAX_HEADER:
        raise ConnectionError("HTTP header obfuscation: response header too long")
    return None


class HttpHeaderStream:
    """*inner* with the request head written first and the response head read away."""

    __slots__ = ("_head", "_inner", "_pending")

    def __init__(self, inner: Any, head: bytes) -> None:
        self._inner = inner
        self._head: bytes | None = head
        self._pending: bytearray | None = bytearray()

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            await self._inner.write(head + bytes(data))
            return
        await self._inner.write(data)

    async def read(self, max_bytes: int = 65536) -> bytes:
        pending = self._pending
        if pending is None:
            data: bytes = await self._inner.read(max_bytes)
            return data
        while True:
            chunk = await self._inner.read(max_bytes)
            if not chunk:
                raise ConnectionError("HTTP header obfuscation: connection closed before the response header")
            pending += chunk
            taken = skip_response(bytes(pending))
            if taken is not None:
                rest = bytes(pending[taken:])
                self._pending = None
                if rest:
                    return rest
                return await self.read(max_bytes)

    async def write_eof(self) -> None:
        if self._head is not None:  # nothing was written: the head still goes first
            head, self._head = self._head, None
            await self._inner.write(head)
        await self._inner.write_eof()

    def abort(self) -> None:
        self._inner.abort()

    async def aclose(self) -> None:
        await self._inner.aclose()

    def fileno(self) -> int | None:
        return None


class HttpHeaderLayer(Layer):
    """The layer :mod:`tunray.transport` stacks for raw TCP with an HTTP header."""

    name = "raw+http-header"

    def __init__(self, stream: Settings) -> None:
        super().__init__(stream)
        header = stream.rawSettings.header
        self.request = RequestHead(header.request)

    async def wrap(self, inner: Any, dest: Destination) -> Any:
        return HttpHeaderStream(inner, self.request.render())
