"""One DNS exchange with an upstream server over UDP, TCP, DoH (HTTP/2 or HTTP/1.1) or h2c.

Each server kind is an :class:`Upstream` whose ``exchange(name, qtype)`` sends one
query and returns the parsed response.  Upstreams do not open sockets themselves:
a :class:`Connector` hands them a connected socket, either dialed directly (the
``+local`` forms and ``localhost``) or the near end of a flow through tunray's own
dispatcher (see :mod:`tunray.dns.routed`), so a DoH server is reachable through a
VLESS outbound exactly as in Xray.

Rules taken from Xray (app/dns/nameserver_*.go):

* UDP: a truncated answer to a query without EDNS0 is asked again with an EDNS0 OPT
  record advertising 1350 bytes; tunray then falls back to TCP (RFC 7766) if that
  answer is truncated too (Xray keeps the truncated one).
* TCP: RFC 1035 4.2.2 framing, a two-byte length before each message.
* DoH (RFC 8484): ``POST`` of ``application/dns-message`` to the URL's path; ALPN
  offers ``h2`` and ``http/1.1`` and the server's choice is used; a status other
  than 200 is an error.  Certificates are verified against the system store
  (``SSL_CERT_FILE`` is honoured, as in Go).
* ``clientIp`` adds an EDNS0 client-subnet option (RFC 7871), /24 for IPv4 and
  /96 for IPv6, in an OPT record advertising 1350 bytes.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import ssl
import struct
from abc import ABC, abstractmethod
from typing import Protocol

import h2.config
import h2.connection
import h2.events
import h11

from tunray.dns.message import Message, build_query, parse_message
from tunray.net.address import Destination, IPAddress

EDNS_PAYLOAD = 1350
MAX_MESSAGE = 65535


class Connector(Protocol):
    """Opens the sockets an upstream talks over; see :mod:`tunray.dns.routed`."""

    async def tcp(self, dest: Destination, timeout: float) -> socket.socket: ...

    async def udp(self, dest: Destination) -> socket.socket: ...


def opt_record(client_ip: IPAddress | None) -> bytes:
    """An EDNS0 OPT pseudo-record (RFC 6891 6.1.2), with client subnet if *client_ip*.

    ``NAME=0 | TYPE=41 | CLASS=payload size | TTL=ext-rcode,version,DO | RDLEN | options``;
    client subnet option: ``CODE=8 | LEN | FAMILY | SOURCE PREFIX | SCOPE PREFIX=0 | ADDRESS``.
    """
    options = b""
    if client_ip is not None:
        family, bits = (1, 24) if client_ip.version == 4 else (2, 96)
        address = client_ip.packed[: (bits + 7) // 8]
        body = struct.pack("!HBB", family, bits, 0) + address
        options = struct.pack("!HH", 8, len(body)) + body
    return b"\x00" + struct.pack("!HHIH", 41, EDNS_PAYLOAD, 0, len(options)) + options


def make_query(name: str, qtype: int, *, edns: bool, client_ip: IPAddress | None) -> tuple[int, bytes]:
    qid = secrets.randbits(16)
    query = build_query(qid, name, qtype)
    if edns or client_ip is not None:
        # ARCOUNT is the last header field (offset 10).
        query = query[:10] + b"\x00\x01" + query[12:] + opt_record(client_ip)
    return qid, query


def check_reply(data: bytes, qid: int, name: str, qtype: int) -> Message | None:
    """The parsed reply if it answers (*qid*, *name*, *qtype*), else None."""
    if len(data) < 2 or int.from_bytes(data[:2], "big") != qid:
        return None
    try:
        msg = parse_message(data)
    except ValueError:
        return None
    if not msg.is_response or not msg.questions:
        return None
    q = msg.questions[0]
    if q.name != name or q.qtype != qtype:
        return None
    return msg


class Upstream(ABC):
    def __init__(self, connector: Connector, client_ip: IPAddress | None = None) -> None:
        self.connector = connector
        self.client_ip = client_ip

    @abstractmethod
    async def exchange(self, name: str, qtype: int, timeout: float) -> Message:
        """Ask for (*name*, *qtype*); raise ``OSError``/``TimeoutError`` on failure."""


class UDPUpstream(Upstream):
    def __init__(self, dest: Destination, connector: Connector, client_ip: IPAddress | None = None) -> None:
        super().__init__(connector, client_ip)
        self.dest = dest
        self.tcp = TCPUpstream(dest, connector, client_ip)

    async def exchange(self, name: str, qtype: int, timeout: float) -> Message:
        async with asyncio.timeout(timeout):
            msg = await self._udp(name, qtype, edns=False, timeout=timeout)
            if msg.truncated:
                msg = await self._udp(name, qtype, edns=True, timeout=timeout)
            if msg.truncated:
                msg = await self.tcp.exchange(name, qtype, timeout)
            return msg

    async def _udp(self, name: str, qtype: int, *, edns: bool, timeout: float) -> Message:
        qid, query = make_query(name, qtype, edns=edns, client_ip=self.client_ip)
        loop = asyncio.get_running_loop()
        sock = await self.connector.udp(self.dest)
        try:
            attempts = 2
            for attempt in range(attempts):
                await loop.sock_sendall(sock, query)
                try:
                    async with asyncio.timeout(timeout / attempts):
                        while True:
                            data = await loop.sock_recv(sock, MAX_MESSAGE)
                            if not data and sock.family == socket.AF_UNIX:
                                raise ConnectionResetError("the routed DNS flow ended")
                            msg = check_reply(data, qid, name, qtype)
                            if msg is not None:
                                return msg
                except TimeoutError:
                    if attempt == attempts - 1:
                        raise
            raise TimeoutError
        finally:
            sock.close()


async def _read_exactly(reader: asyncio.StreamReader, n: int) -> bytes:
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError as exc:
        raise ConnectionResetError("upstream closed the connection mid-message") from exc


class TCPUpstream(Upstream):
    def __init__(self, dest: Destination, connector: Connector, client_ip: IPAddress | None = None) -> None:
        super().__init__(connector, client_ip)
        self.dest = dest

    async def exchange(self, name: str, qtype: int, timeout: float) -> Message:
        async with asyncio.timeout(timeout):
            qid, query = make_query(name, qtype, edns=False, client_ip=self.client_ip)
            sock = await self.connector.tcp(self.dest, timeout)
            reader, writer = await asyncio.open_connection(sock=sock)
            try:
                writer.write(struct.pack("!H", len(query)) + query)
                while True:
                    (size,) = struct.unpack("!H", await _read_exactly(reader, 2))
                    msg = check_reply(await _read_exactly(reader, size), qid, name, qtype)
                    if msg is not None:
                        return msg
            finally:
                writer.close()


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

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            ctx = ssl.create_default_context()
            ctx.set_alpn_protocols(["h2", "http/1.1"])
            self._ssl = ctx
        return self._ssl

    async def exchange(self, name: str, qtype: int, timeout: float) -> Message:
        async with asyncio.timeout(timeout):
            # RFC 8484 4.1: use ID 0 for cache friendliness.
            _, query = make_query(name, qtype, edns=False, client_ip=self.client_ip)
            query = b"\x00\x00" + query[2:]
            sock = await self.connector.tcp(self.dest, timeout)
            if self.tls:
                reader, writer = await asyncio.open_connection(
                    sock=sock, ssl=self._context(), server_hostname=self.host
                )
                ssl_object = writer.get_extra_info("ssl_object")
                alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
            else:
                reader, writer = await asyncio.open_connection(sock=sock)
                alpn = "h2"
            try:
                if alpn == "http/1.1":
                    status, body = await _http11(reader, writer, self.host, self.path, query)
                else:
                    status, body = await _h2(reader, writer, self.host, self.path, query, self.tls)
            finally:
                writer.close()
            if status != 200:
                raise ConnectionError(f"DoH server returned status {status}")
            msg = check_reply(body, 0, name, qtype)
            if msg is None:
                raise ConnectionError("DoH server returned no answer to the question")
            return msg


def _request_headers(host: str, query: bytes) -> list[tuple[str, str]]:
    return [
        ("accept", "application/dns-message"),
        ("content-type", "application/dns-message"),
        ("content-length", str(len(query))),
    ]


async def _h2(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, path: str, query: bytes, tls: bool
) -> tuple[int, bytes]:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    headers = [
        (":method", "POST"),
        (":scheme", "https" if tls else "http"),
        (":authority", host),
        (":path", path),
        *_request_headers(host, query),
    ]
    conn.send_headers(sid, headers)
    conn.send_data(sid, query, end_stream=True)
    writer.write(conn.data_to_send())
    status = 0
    body = bytearray()
    while True:
        data = await reader.read(65536)
        if not data:
            raise ConnectionResetError("DoH server closed the HTTP/2 connection")
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == sid:
                for k, v in event.headers:
                    if k in (b":status", ":status"):
                        status = int(v)
            elif isinstance(event, h2.events.DataReceived) and event.stream_id == sid:
                body += event.data
                if len(body) > MAX_MESSAGE:
                    raise ConnectionError("DoH answer larger than a DNS message")
                conn.acknowledge_received_data(event.flow_controlled_length, sid)
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == sid:
                writer.write(conn.data_to_send())
                return status, bytes(body)
            elif isinstance(event, h2.events.StreamReset) and event.stream_id == sid:
                raise ConnectionResetError(f"DoH stream reset (error {event.error_code})")
            elif isinstance(event, h2.events.ConnectionTerminated):
                raise ConnectionResetError("DoH server sent GOAWAY")
        writer.write(conn.data_to_send())


async def _http11(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, path: str, query: bytes
) -> tuple[int, bytes]:
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="POST", target=path, headers=[("host", host), *_request_headers(host, query)]
    )
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
