"""XHTTP ("splithttp") requests, sans-IO: URLs, headers, padding and packet-up batching.

Wire behaviour (Xray ``transport/internet/splithttp``), for one tunnelled connection:

* ``stream-one``: ``POST {path}`` — the request body is the uplink, the response body
  the downlink (one HTTP/2 stream).
* ``stream-up``: ``GET {path}{session}`` (downlink) and ``POST {path}{session}`` whose
  streamed body is the uplink; the POST's response body is keep-alive padding, ignored.
* ``packet-up``: ``GET {path}{session}`` (downlink) and ``POST {path}{session}/{seq}``
  per uplink chunk, ``seq`` = 0, 1, 2, ...; each body at most ``scMaxEachPostBytes``,
  POSTs at least ``scMinPostsIntervalMs`` apart.

``{path}`` always ends in ``/``; a query in the configured path is kept on every request.
``session`` is a random UUID.  Every request carries ``Referer: https://{host}{path}?x_padding=XXX…``
with ``xPaddingBytes`` (default 100–1000) ``X`` characters, which current Xray servers
check; streaming POSTs carry ``Content-Type: application/grpc`` unless ``noGRPCHeader``.
``auto`` means ``stream-one`` under REALITY and ``packet-up`` otherwise (current Xray;
Xray ≤ 24.11 had no ``stream-one`` and used ``stream-up`` under REALITY).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

MODES = ("auto", "packet-up", "stream-up", "stream-one")


@dataclass(frozen=True, slots=True)
class Range:
    """Xray's ``Int32Range``: a value drawn uniformly from ``lo..hi`` each time."""

    lo: int
    hi: int

    def roll(self, rng: random.Random) -> int:
        return self.lo if self.lo >= self.hi else rng.randint(self.lo, self.hi)


@dataclass(frozen=True, slots=True)
class XhttpOptions:
    path: str  # normalised, ends with "/"
    query: str  # from the configured path, without "?"
    host: str  # "" = tls/reality serverName, then the address
    headers: tuple[tuple[str, str], ...]
    mode: str
    padding: Range = Range(100, 1000)
    max_post: Range = Range(1_000_000, 1_000_000)
    min_interval_ms: Range = Range(30, 30)
    no_grpc_header: bool = False
    scheme: str = "https"  # "http" without TLS/REALITY (then HTTP/1.1)
    http1: bool = False  # no TLS, or tlsSettings.alpn is exactly ["http/1.1"] (Xray's rule)


def normalise_path(path: str) -> tuple[str, str]:
    """``"api?x=1"`` -> ``("/api/", "x=1")``."""
    base, _, query = path.partition("?")
    if not base.startswith("/"):
        base = "/" + base
    if not base.endswith("/"):
        base += "/"
    return base, query


def resolve_mode(mode: str, reality: bool) -> str:
    if mode in ("", "auto"):
        return "stream-one" if reality else "packet-up"
    return mode


def new_session_id() -> str:
    return str(uuid.uuid4())


def request_target(opts: XhttpOptions, session: str = "", seq: int | None = None) -> str:
    target = opts.path
    if session:
        target += session
        if seq is not None:
            target += f"/{seq}"
    return target + ("?" + opts.query if opts.query else "")


def request_headers(
    opts: XhttpOptions,
    method: str,
    target: str,
    authority: str,
    rng: random.Random,
    *,
    streaming_body: bool = False,
    content_length: int | None = None,
) -> list[tuple[bytes, bytes]]:
    """The HTTP/2 request header block for one XHTTP request."""
    padding = "X" * opts.padding.roll(rng)
    headers: list[tuple[bytes, bytes]] = [
        (b":method", method.encode()),
        (b":scheme", opts.scheme.encode()),
        (b":authority", authority.encode()),
        (b":path", target.encode()),
    ]
    headers += [(k.lower().encode(), v.encode()) for k, v in opts.headers]
    headers.append((b"referer", f"{opts.scheme}://{authority}{opts.path}?x_padding={padding}".encode()))
    if streaming_body and not opts.no_grpc_header:
        headers.append((b"content-type", b"application/grpc"))
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    return headers


class PacketBatcher:
    """packet-up's uplink: batches writes into POST bodies, spaced in time.  Sans-IO.

    ``feed`` queues bytes; ``next_post(now)`` returns ``(seq, body)`` when a POST may go
    (something queued and ``now`` at or past the due time), else ``None``;
    ``next_timer(now)`` says when to ask again (``None``: nothing queued).  Each POST
    draws the next gap from ``scMinPostsIntervalMs``.  Times are seconds on any
    monotonic clock.
    """

    __slots__ = ("_buf", "_due", "_interval", "_max", "_rng", "_seq")

    def __init__(self, max_post: Range, min_interval_ms: Range, rng: random.Random) -> None:
        self._max = max_post
        self._interval = min_interval_ms
        self._rng = rng
        self._buf = bytearray()
        self._seq = 0
        self._due = float("-inf")

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def next_timer(self, now: float) -> float | None:
        return max(now, self._due) if self._buf else None

    def next_post(self, now: float) -> tuple[int, bytes] | None:
        if not self._buf or now < self._due:
            return None
        size = max(1, self._max.roll(self._rng))
        body = bytes(self._buf[:size])
        del self._buf[:size]
        seq = self._seq
        self._seq += 1
        self._due = now + self._interval.roll(self._rng) / 1000
        return seq, body
