"""DNS over HTTPS (RFC 8484) and over cleartext HTTP/2 (``h2c``), as Xray's DoH client.

Each query is a ``POST`` of ``application/dns-message`` (ID 0, RFC 8484 4.1) to the
URL's path; a status other than 200 is an error.  TLS offers ALPN ``h2`` and
``http/1.1``; certificates are verified against the system store (``SSL_CERT_FILE``
is honoured, as in Go).

Theory of operation: an HTTP/2 server gets one connection that carries every query
as its own stream (Xray keeps its ``http2.Transport`` connection the same way), so a
DoH server reached through a proxy costs one proxied connection and one TLS
handshake, not one per query.  One reader task feeds the sans-IO ``h2`` connection
and completes each stream's future; when the connection ends (server GOAWAY, the
proxy's idle timeout, an error) every waiting query fails and the next query opens a
new connection.  A server that picks HTTP/1.1 gets one connection per query.
:meth:`DoHUpstream.aclose` closes the kept connection (shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h11

from tunray.dns.message import Message
from tunray.dns.upstream import MAX_MESSAGE, Connector, Upstream, check_reply, make_query
from tunray.net.address import Destination, IPAddress

_Response = tuple[int, bytes]


class DoHUpstream(Upstream):
    """RFC 8484 over TLS (``https``) or cleartext HTTP/2 (``h2c``)."""

    def __init__(
        self,
        dest: Destination,
        host: str,
        path: str,
        connector: Connector,
        client_ip: IPAddress | None = None,
        *,
        tls: bool = True,
    ) -> None:
        super().__init__(connector, client_ip)
        self.dest = dest
        self.host = host
        self.path = path or "/dns-query"
        self.tls = tls
        self._ssl: ssl.SSLContext | None = None
        self._h2: _H2Client | None = None
        self._opening = asyncio.Lock()
        #: HTTP/2 connections opened so far (tests check that queries share one).
        self.connections = 0

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            ctx = ssl.create_default_context()
            ctx.set_alpn_protocols(["h2", "http/1.1"])
            self._ssl = ctx
        return self._ssl

    async def _open(self, timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
        sock = await self.connector.tcp(self.dest, timeout)
        if not self.tls:
            reader, writer = await asyncio.open_connection(sock=sock)
            return reader, writer, "h2"
        reader, writer = await asyncio.open_connection(sock=sock, ssl=self._context(), server_hostname=self.host)
        ssl_object = writer.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        return reader, writer, alpn or "http/1.1"

    async def exchange(self, name: str, qtype: int, timeout: float) -> Message:
        async with asyncio.timeout(timeout):
            _, query = make_query(name, qtype, edns=False, client_ip=self.client_ip)
            query = b"\x00\x00" + query[2:]
            status, body = await self._request(query, timeout)
            if status != 200:
                raise ConnectionError(f"DoH server returned status {status}")
            msg = check_reply(body, 0, name, qtype)
            if msg is None:
                raise ConnectionError("DoH server returned no answer to the question")
            return msg

    async def _request(self, query: bytes, timeout: float) -> _Response:
        async with self._opening:
            client = self._h2
            if client is None or not client.usable:
                self._h2 = None
                reader, writer, alpn = await self._open(timeout)
                if alpn == "h2":
                    client = self._h2 = _H2Client(reader, writer, self.host, self.tls)
                    self.connections += 1
                else:
                    client = None
        if client is not None:
            return await client.request(self.path, query)
        try:
            return await _http11(reader, writer, self.host, self.path, query)
        finally:
            writer.close()

    async def aclose(self) -> None:
        client, self._h2 = self._h2, None
        if client is not None:
            await client.aclose()


def _request_headers(query: bytes) -> list[tuple[str, str]]:
    return [
        ("accept", "application/dns-message"),
        ("content-type", "application/dns-message"),
        ("content-length", str(len(query))),
    ]


class _H2Client:
    """One HTTP/2 connection; each request is a stream completed by the reader task."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, tls: bool) -> None:
        self.reader = reader
        self.writer = writer
        self.host = host
        self.scheme = "https" if tls else "http"
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.writer.write(self.conn.data_to_send())
        self.streams: dict[int, tuple[asyncio.Future[_Response], list[int], bytearray]] = {}
        self.closed = False
        self.task = asyncio.get_running_loop().create_task(self._read_loop())

    @property
    def usable(self) -> bool:
        return not self.closed and self.conn.open_outbound_streams < self.conn.remote_settings.max_concurrent_streams

    async def request(self, path: str, query: bytes) -> _Response:
        if self.closed:
            raise ConnectionResetError("DoH connection closed")
        sid = self.conn.get_next_available_stream_id()
        headers = [(":method", "POST"), (":scheme", self.scheme), (":authority", self.host), (":path", path)]
        future: asyncio.Future[_Response] = asyncio.get_running_loop().create_future()
        self.streams[sid] = (future, [0], bytearray())
        try:
            self.conn.send_headers(sid, headers + _request_headers(query))
            self.conn.send_data(sid, query, end_stream=True)
            self.writer.write(self.conn.data_to_send())
            return await future
        except h2.exceptions.ProtocolError as exc:
            raise ConnectionError(f"DoH HTTP/2: {exc}") from None
        finally:
            if self.streams.pop(sid, None) is not None and not self.closed:
                # given up (timeout, cancellation): tell the server
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    self.conn.reset_stream(sid)
                    self.writer.write(self.conn.data_to_send())

    async def _read_loop(self) -> None:
        error: BaseException = ConnectionResetError("DoH server closed the HTTP/2 connection")
        try:
            while data := await self.reader.read(65536):
                for event in self.conn.receive_data(data):
                    self._event(event)
                self.writer.write(self.conn.data_to_send())
        except (OSError, h2.exceptions.ProtocolError) as exc:
            error = ConnectionResetError(f"DoH HTTP/2 connection failed: {exc}")
        finally:
            self.closed = True
            for future, _, _ in self.streams.values():
                if not future.done():
                    future.set_exception(error)
            self.writer.close()

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ConnectionTerminated):
            self.closed = True  # GOAWAY: streams already answered complete; no new ones
            return
        sid = getattr(event, "stream_id", None)
        entry = self.streams.get(sid) if sid is not None else None
        if entry is None:
            return
        future, status, body = entry
        if isinstance(event, h2.events.ResponseReceived):
            for k, v in event.headers:
                if k in (b":status", ":status"):
                    status[0] = int(v)
        elif isinstance(event, h2.events.DataReceived):
            body += event.data
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if len(body) > MAX_MESSAGE and not future.done():
                future.set_exception(ConnectionError("DoH answer larger than a DNS message"))
        elif isinstance(event, h2.events.StreamEnded):
            if not future.done():
                future.set_result((status[0], bytes(body)))
        elif isinstance(event, h2.events.StreamReset) and not future.done():
            future.set_exception(ConnectionResetError(f"DoH stream reset (error {event.error_code})"))

    async def aclose(self) -> None:
        """GOAWAY and FIN, so the server (and a proxy between) ends the connection promptly."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(h2.exceptions.ProtocolError, OSError):
                self.conn.close_connection()
                self.writer.write(self.conn.data_to_send())
                if self.writer.can_write_eof():
                    self.writer.write_eof()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def _http11(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, path: str, query: bytes
) -> _Response:
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(method="POST", target=path, headers=[("host", host), *_request_headers(query)])
    writer.write(conn.send(request) + conn.send(h11.Data(data=query)) + conn.send(h11.EndOfMessage()))
    status = 0
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_MESSAGE:
                raise ConnectionError("DoH answer larger than a DNS message")
        elif isinstance(event, h11.EndOfMessage):
            return status, bytes(body)
        elif isinstance(event, h11.ConnectionClosed):
            raise ConnectionResetError("DoH server closed the HTTP/1.1 connection")
