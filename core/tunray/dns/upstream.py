"""One DNS exchange with an upstream server over UDP or TCP (DoH: :mod:`tunray.dns.doh`).

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
* ``clientIp`` adds an EDNS0 client-subnet option (RFC 7871), /24 for IPv4 and
  /96 for IPv6, in an OPT record advertising 1350 bytes.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import struct
from abc import ABC, abstractmethod
from typing import Protocol

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

    async def aclose(self) -> None:
        """Close connections kept between queries.  Idempotent."""


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
