"""The ``http`` inbound: an HTTP/1.1 proxy (CONNECT and absolute-URI forwarding).

HTTP/1.1 parsing is h11's (python-hyper's sans-IO HTTP/1.1): request heads, bodies in
every framing (Content-Length, chunked, close-delimited), 1xx responses and keep-alive
are exactly the parts a forward proxy must get right, and h11 is small, typed and
well kept.  It runs only on handshakes and on plain-HTTP forwarding; CONNECT tunnels
(the common case) relay raw bytes without it.

* ``CONNECT host:port``: the flow's link answers ``200 Connection established`` once
  the outbound is up and ``503 Service Unavailable`` when routing or the dial fails.
* ``GET http://host/path`` and other absolute-URI requests: each request is one flow
  to its own host.  The request goes upstream in origin form, without hop-by-hop
  headers and with ``Connection: close``; the response comes back through h11, so the
  client connection stays open for its next request (keep-alive, to any host) whenever
  HTTP/1.1 allows it.  A failure before any response byte answers ``503``.
* Origin-form requests (a transparent client) need ``allowTransparent``; otherwise
  ``400``, as in Xray.
* ``accounts``: ``Proxy-Authorization: Basic`` must match one; else ``407`` and close.
  The user name becomes the flow's email.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import socket
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import h11
from tunray.config.schema import Bool, Field, Int, Schema
from tunray.link import ByteLink, LinkClosed
from tunray.net.address import Destination, Network, parse_host
from tunray.net.applink import SocketByteLink
from tunray.net.stream import SocketStream

from tunray_local.base import ACCOUNTS, LocalInbound, Refused, accounts_of, read_some

if TYPE_CHECKING:
    from tunray.config.model import InboundConfig
    from tunray.runtime import Runtime

MAX_HEAD = 64 * 1024
OK_CONNECT = b"HTTP/1.1 200 Connection established\r\n\r\n"
UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nProxy-Connection: close\r\nContent-Length: 0\r\n\r\n"
AUTH_REQUIRED = b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="proxy"\r\n\r\n'
HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"trailers",
    b"upgrade",
}


class BadRequest(ValueError):
    pass


def basic_auth(header: bytes | None) -> tuple[str, str] | None:
    """``Basic base64(user:pass)`` -> (user, pass), or None."""
    if not header or not header.startswith(b"Basic "):
        return None
    try:
        text = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = text.partition(":")
    return (user, password) if sep else None


def parse_authority(text: str, default_port: int) -> tuple[str, int]:
    """``host[:port]`` (IPv6 bracketed) -> (host, port); raise BadRequest."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise BadRequest(f"bad host {text!r}")
        host, rest = text[1:end], text[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise BadRequest("empty host")
    if port_text:
        if not port_text.isdigit() or int(port_text) > 65535:
            raise BadRequest(f"bad port in {text!r}")
        return host, int(port_text)
    return host, default_port


def forward_target(req: h11.Request, allow_transparent: bool) -> tuple[Destination, bytes, bytes]:
    """(destination, origin-form target, Host value) of a plain (non-CONNECT) request."""
    target = req.target.decode("ascii", errors="replace")
    if "://" in target:
        url = urlsplit(target)
        if url.scheme.lower() not in ("http", "https") or not url.netloc:
            raise BadRequest(f"unsupported URL {target!r}")
        host, port = parse_authority(url.netloc.rpartition("@")[2], 443 if url.scheme.lower() == "https" else 80)
        path = url.path or "/"
        if url.query:
            path += "?" + url.query
        return Destination(Network.TCP, parse_host(host), port), path.encode(), url.netloc.encode()
    if not allow_transparent:
        raise BadRequest("not a proxy request (origin-form target; allowTransparent is off)")
    host_header = next((v for k, v in req.headers if k == b"host"), b"")
    if not host_header:
        raise BadRequest("no Host header")
    host, port = parse_authority(host_header.decode(errors="replace"), 80)
    return Destination(Network.TCP, parse_host(host), port), req.target, host_header


def _clean(headers: Any) -> list[tuple[bytes, bytes]]:
    named: set[bytes] = set()
    for k, v in headers:
        if k == b"connection":
            named.update(part.strip().lower() for part in v.split(b","))
    return [(k, v) for k, v in headers if k not in HOP_BY_HOP and k not in named]


class ForwardLink(ByteLink):
    """One forwarded request/response as a flow's app side.

    ``read`` yields the rewritten request head, then its body (pulled from the client
    through the client-facing h11 connection), then waits until the response is complete
    before ending the uplink, so the server sees no early half-close.  ``write`` parses the
    server's bytes with a client-role h11 connection and re-frames each event to the client.
    """

    def __init__(self, client: h11.Connection, stream: SocketStream, request: h11.Request, path: bytes, host: bytes) -> None:
        self.client = client
        self.stream = stream
        headers = [(k, v) for k, v in _clean(request.headers) if k != b"host"]
        headers = [(b"host", host), *headers, (b"connection", b"close")]
        self.up = h11.Connection(h11.CLIENT)
        self._head: bytes | None = self.up.send(h11.Request(method=request.method, target=path, headers=headers)) or b""
        self._request_done = False
        self.response_started = False
        loop = asyncio.get_running_loop()
        #: set when the flow needs no more uplink (response complete, or the flow failed)
        self.response_done: asyncio.Future[None] = loop.create_future()
        #: set only when the whole response reached the client
        self.complete: asyncio.Future[None] = loop.create_future()
        self.failed = False
        self._accepted = False

    async def read(self, max_bytes: int = 65536) -> bytes:
        if self._head is not None:
            head, self._head = self._head, None
            return head
        while not self._request_done:
            ev = self.client.next_event()
            if ev is h11.NEED_DATA:
                data = await self.stream.read(max_bytes)
                self.client.receive_data(data)
                if not data and self.client.their_state is h11.SEND_BODY:
                    self.failed = True
                    return b""
                continue
            if isinstance(ev, h11.Data):
                return self.up.send(ev) or b""
            if isinstance(ev, h11.EndOfMessage):
                self._request_done = True
                tail = self.up.send(h11.EndOfMessage())
                if tail:
                    return tail
            elif isinstance(ev, h11.ConnectionClosed):
                self.failed = True
                return b""
        if not self.response_done.done():
            await asyncio.shield(self.response_done)
        return b""

    async def _pump(self) -> None:
        while True:
            ev = self.up.next_event()
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                return
            if isinstance(ev, h11.InformationalResponse):
                await self._send(h11.InformationalResponse(status_code=ev.status_code, headers=_clean(ev.headers), reason=ev.reason))
            elif isinstance(ev, h11.Response):
                self.response_started = True
                headers = _clean(ev.headers)
                await self._send(h11.Response(status_code=ev.status_code, headers=headers, reason=ev.reason))
            elif isinstance(ev, h11.Data):
                await self._send(ev)
            elif isinstance(ev, h11.EndOfMessage):
                await self._send(h11.EndOfMessage())
                if not self.response_done.done():
                    self.response_done.set_result(None)
                if not self.complete.done():
                    self.complete.set_result(None)
                return
            elif isinstance(ev, h11.ConnectionClosed):
                return

    async def _send(self, event: Any) -> None:
        data = self.client.send(event)
        if data:
            try:
                await self.stream.write(data)
            except ConnectionError as exc:
                raise LinkClosed(str(exc)) from None

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.response_done.done():
            return  # bytes after the response (the server should have closed): discarded
        try:
            self.up.receive_data(bytes(data))
            await self._pump()
        except h11.RemoteProtocolError as exc:
            self.failed = True
            raise LinkClosed(f"bad response from upstream: {exc}") from None

    async def write_eof(self) -> None:
        if self.response_done.done():
            return
        try:
            self.up.receive_data(b"")
            await self._pump()
        except h11.RemoteProtocolError as exc:
            self.failed = True
            raise LinkClosed(f"response truncated: {exc}") from None
        if not self.response_done.done():
            self.failed = True
            self.response_done.set_result(None)

    async def accept(self) -> None:
        self._accepted = True

    @property
    def accepted(self) -> bool:
        return self._accepted

    def abort(self) -> None:
        self._accepted = True
        if not self.complete.done():
            self.failed = True
        if not self.response_done.done():
            self.response_done.set_result(None)

    async def aclose(self) -> None:
        if not self.response_done.done():
            self.failed = True
            self.response_done.set_result(None)


class HttpProxy:
    """The HTTP proxy protocol, shared by the ``http`` inbound and ``socks``/``mixed``."""

    def __init__(self, inbound: LocalInbound, accounts: dict[str, str], *, allow_transparent: bool) -> None:
        self.inbound = inbound
        self.accounts = accounts
        self.allow_transparent = allow_transparent

    async def serve(self, stream: SocketStream, peer: Destination | None, first: bytes = b"") -> None:
        inbound = self.inbound
        timeout = inbound.policy.handshake
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        if first:
            conn.receive_data(first)
        while True:
            try:
                ev = conn.next_event()
                while ev is h11.NEED_DATA:
                    data = await read_some(stream, timeout)
                    conn.receive_data(data)
                    ev = conn.next_event()
            except h11.RemoteProtocolError as exc:
                await stream.write(BAD_REQUEST)
                raise Refused(f"bad HTTP request: {exc}") from None
            if isinstance(ev, h11.ConnectionClosed):
                return
            if not isinstance(ev, h11.Request):
                raise Refused(f"unexpected {type(ev).__name__}")
            email = ""
            if self.accounts:
                creds = basic_auth(next((v for k, v in ev.headers if k == b"proxy-authorization"), None))
                if creds is None or self.accounts.get(creds[0]) != creds[1] or creds[0] not in self.accounts:
                    await stream.write(AUTH_REQUIRED)
                    raise Refused("proxy authentication failed")
                email = creds[0]
            try:
                if ev.method == b"CONNECT":
                    host, port = parse_authority(ev.target.decode(errors="replace"), 443)
                    dest = Destination(Network.TCP, parse_host(host), port)
                else:
                    dest, path, host_value = forward_target(ev, self.allow_transparent)
            except BadRequest as exc:
                await stream.write(BAD_REQUEST)
                raise Refused(str(exc)) from None
            ctx = inbound.context(peer, dest, email)
            if ev.method == b"CONNECT":
                leftover = conn.trailing_data[0]
                link = SocketByteLink(stream, leftover, accept_reply=OK_CONNECT, refuse_reply=UNAVAILABLE)
                await inbound.runtime.dispatcher.dispatch_link(ctx, dest, link)
                return
            fwd = ForwardLink(conn, stream, ev, path, host_value)
            # The flow runs on a dispatcher-owned task; once the whole response has reached
            # the client, the next request is served at once, whether or not the server has
            # closed its side yet (the old flow only discards what more it sends).
            flow = inbound.runtime.dispatcher.spawn(ctx, dest, fwd)
            await asyncio.wait((flow, fwd.complete), return_when=asyncio.FIRST_COMPLETED)
            if not fwd.complete.done():
                if not fwd.response_started:
                    await stream.write(UNAVAILABLE)
                return
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
                continue
            return


class HttpInbound(LocalInbound):
    protocol = "http"
    settings_schema: ClassVar[Schema] = Schema(
        ACCOUNTS,
        Field("allowTransparent", Bool(), default=False, doc="also forward origin-form requests by their Host"),
        Field("userLevel", Int(min=0), default=0, doc="policy level of every flow"),
    )

    def __init__(self, config: InboundConfig, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        self.proxy = HttpProxy(self, accounts_of(self.settings), allow_transparent=self.settings.allowTransparent)

    async def handle(
        self, stream: SocketStream, sock: socket.socket, peer: Destination | None, local: Destination | None
    ) -> None:
        await self.proxy.serve(stream, peer)
