"""Minimal proxy clients for tests: SOCKS5 (CONNECT, UDP ASSOCIATE), SOCKS4/4a, HTTP CONNECT, direct.

They speak just enough of each protocol to drive a listening inbound from a test and
to tell a refusal (:class:`ProxyRefused`, with the reply) from a success.  Not for
production use.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import random
import socket
import struct
from dataclasses import dataclass

from tunray.net.address import Destination, Network, parse_host

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class ProxyRefused(ConnectionError):
    """The proxy answered the request with a refusal."""


def _addr(dest: Destination) -> bytes:
    host = dest.host
    if isinstance(host, ipaddress.IPv4Address):
        return b"\x01" + host.packed + struct.pack("!H", dest.port)
    if isinstance(host, ipaddress.IPv6Address):
        return b"\x04" + host.packed + struct.pack("!H", dest.port)
    name = host.encode()
    return bytes((3, len(name))) + name + struct.pack("!H", dest.port)


async def _read_addr(reader: asyncio.StreamReader) -> Destination:
    atyp = (await reader.readexactly(1))[0]
    if atyp == 1:
        host: object = ipaddress.IPv4Address(await reader.readexactly(4))
    elif atyp == 4:
        host = ipaddress.IPv6Address(await reader.readexactly(16))
    else:
        host = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
    port = struct.unpack("!H", await reader.readexactly(2))[0]
    return Destination(Network.TCP, parse_host(str(host)), port)


@dataclass
class Socks5Client:
    host: str
    port: int
    user: str = ""
    password: str = ""
    #: this client picks each flow's destination (dokodemo-door's client cannot)
    chooses_destination = True
    udp = True

    async def _handshake(self, cmd: int, dest: Destination) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Destination]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            method = 2 if self.user else 0
            writer.write(bytes((5, 1, method)))
            reply = await reader.readexactly(2)
            if reply[1] != method:
                raise ProxyRefused(f"auth method refused: {reply!r}")
            if self.user:
                u, p = self.user.encode(), self.password.encode()
                writer.write(bytes((1, len(u))) + u + bytes((len(p),)) + p)
                if (await reader.readexactly(2))[1] != 0:
                    raise ProxyRefused("bad credentials")
            writer.write(bytes((5, cmd, 0)) + _addr(dest))
            head = await reader.readexactly(3)
            bound = await _read_addr(reader)
            if head[1] != 0:
                raise ProxyRefused(f"SOCKS5 reply {head[1]}")
        except BaseException:
            writer.close()
            raise
        return reader, writer, bound

    async def open_tcp(self, dest: Destination) -> Streams:
        reader, writer, _ = await self._handshake(1, dest)
        return reader, writer

    async def associate(self) -> tuple[asyncio.StreamWriter, socket.socket, tuple[str, int]]:
        """UDP ASSOCIATE: (control connection, a UDP socket of ours, the relay address)."""
        _, writer, bound = await self._handshake(3, Destination(Network.UDP, ipaddress.IPv4Address(0), 0))
        family = socket.AF_INET6 if ":" in bound.host_text else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind((self.host if family == socket.AF_INET else "::", 0))
        return writer, sock, (bound.host_text, bound.port)


def socks5_udp(dest: Destination, payload: bytes) -> bytes:
    return b"\0\0\0" + _addr(dest) + payload


def parse_socks5_udp(datagram: bytes) -> tuple[Destination, bytes]:
    atyp = datagram[3]
    if atyp == 1:
        return Destination(Network.UDP, ipaddress.IPv4Address(datagram[4:8]), struct.unpack("!H", datagram[8:10])[0]), datagram[10:]
    if atyp == 4:
        return Destination(Network.UDP, ipaddress.IPv6Address(datagram[4:20]), struct.unpack("!H", datagram[20:22])[0]), datagram[22:]
    n = datagram[4]
    return Destination(Network.UDP, parse_host(datagram[5 : 5 + n].decode()), struct.unpack("!H", datagram[5 + n : 7 + n])[0]), datagram[7 + n :]


@dataclass
class Socks4Client:
    host: str
    port: int
    chooses_destination = True
    udp = False

    async def open_tcp(self, dest: Destination) -> Streams:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            if isinstance(dest.host, ipaddress.IPv4Address):
                req = struct.pack("!BBH", 4, 1, dest.port) + dest.host.packed + b"user\0"
            else:  # SOCKS4a
                req = struct.pack("!BBH", 4, 1, dest.port) + b"\0\0\0\1" + b"user\0" + dest.host_text.encode() + b"\0"
            writer.write(req)
            reply = await reader.readexactly(8)
            if reply[1] != 90:
                raise ProxyRefused(f"SOCKS4 reply {reply[1]}")
        except BaseException:
            writer.close()
            raise
        return reader, writer


@dataclass
class HttpConnectClient:
    host: str
    port: int
    user: str = ""
    password: str = ""
    chooses_destination = True
    udp = False

    async def open_tcp(self, dest: Destination) -> Streams:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            auth = ""
            if self.user:
                token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
                auth = f"Proxy-Authorization: Basic {token}\r\n"
            writer.write(f"CONNECT {dest.netloc} HTTP/1.1\r\nHost: {dest.netloc}\r\n{auth}\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1]
            if status != b"200":
                raise ProxyRefused(f"HTTP {status.decode()}")
        except BaseException:
            writer.close()
            raise
        return reader, writer


@dataclass
class DirectClient:
    """A plain connection to the inbound's port (dokodemo-door): the destination is the inbound's."""

    host: str
    port: int
    chooses_destination = False
    udp = False

    async def open_tcp(self, dest: Destination) -> Streams:
        return await asyncio.open_connection(self.host, self.port)


_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """A port free for TCP and UDP on *host* right now, for a config a test writes and a
    peer binds later.

    Drawn below the kernel's ephemeral range, so a connection made in between cannot take
    it as its source port (a port from ``bind(0)`` can), and never handed out twice by one
    process.  *kind* is kept for callers; both kinds are checked.
    """
    del kind
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    high = min(32000, _ephemeral_low())
    rng = random.SystemRandom()
    for _ in range(500):
        port = rng.randrange(20000, high)
        if port in _HANDED_OUT:
            continue
        try:
            for k in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(family, k) as s:
                    s.bind((host, port))
        except OSError:
            continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port found on {host} between 20000 and {high}")
