"""A small SOCKS5 server for tests (RFC 1928 CONNECT and UDP ASSOCIATE, RFC 1929 auth).

Independent of the plugin's codec on purpose: it parses with ``struct`` itself, so
a bug in the codec cannot hide behind the same bug here.  The UDP relay is full
cone: replies from any peer go back to the client with that peer's address.
Runs on the test's own event loop::

    async with SocksServer(users={"u": "p"}) as server:
        ... server.port, server.connects, server.udp_packets ...
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
from types import TracebackType
from typing import Any


def _addr(data: bytes, offset: int) -> tuple[str, int, int]:
    atyp = data[offset]
    if atyp == 1:
        host, end = str(ipaddress.IPv4Address(data[offset + 1 : offset + 5])), offset + 5
    elif atyp == 4:
        host, end = str(ipaddress.IPv6Address(data[offset + 1 : offset + 17])), offset + 17
    elif atyp == 3:
        n = data[offset + 1]
        host, end = data[offset + 2 : offset + 2 + n].decode(), offset + 2 + n
    else:
        raise ValueError(f"atyp {atyp}")
    return host, struct.unpack_from("!H", data, end)[0], end + 2


def _encode(host: str, port: int) -> bytes:
    ip = ipaddress.ip_address(host.split("%")[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return bytes([1 if ip.version == 4 else 4]) + ip.packed + struct.pack("!H", port)


async def _read_addr(reader: asyncio.StreamReader) -> tuple[str, int]:
    atyp = (await reader.readexactly(1))[0]
    if atyp == 3:
        n = (await reader.readexactly(1))[0]
        raw = bytes([3, n]) + await reader.readexactly(n + 2)
    else:
        raw = bytes([atyp]) + await reader.readexactly((4 if atyp == 1 else 16) + 2)
    host, port, _ = _addr(raw, 0)
    return host, port


class _Relay(asyncio.DatagramProtocol):
    def __init__(self, server: SocksServer, client_ip: str) -> None:
        self.server = server
        self.client_ip = client_ip
        self.client: tuple[str, int] | None = None
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's UDP transport is not a subclass

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        assert self.transport is not None
        src = (str(addr[0]), int(addr[1]))
        if src[0] == self.client_ip and (self.client is None or src == self.client):
            self.client = src
            try:
                host, port, end = _addr(data, 3)
            except (ValueError, IndexError, struct.error):
                return
            if data[2] != 0:
                return  # fragments are not supported (nor used by clients in practice)
            self.server.udp_packets += 1
            self.transport.sendto(data[end:], (host, port))
        elif self.client is not None:
            self.transport.sendto(b"\x00\x00\x00" + _encode(*src) + data, self.client)


class SocksServer:
    def __init__(self, users: dict[str, str] | None = None, host: str = "127.0.0.1") -> None:
        self.users = users or {}
        self.host = host
        self.port = 0
        self.connects: list[tuple[str, int]] = []
        self.associations = 0
        self.udp_packets = 0
        self.auth_failures = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> SocksServer:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        except asyncio.CancelledError:
            # Shutdown of this test server: end quietly.  asyncio.start_server reports a
            # handler task that ends cancelled as an unhandled loop exception.
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ver, n = await reader.readexactly(2)
        methods = await reader.readexactly(n)
        want = 2 if self.users else 0
        if ver != 5 or want not in methods:
            writer.write(b"\x05\xff")
            return
        writer.write(bytes([5, want]))
        if want == 2:
            _, ulen = await reader.readexactly(2)
            user = (await reader.readexactly(ulen)).decode()
            plen = (await reader.readexactly(1))[0]
            password = (await reader.readexactly(plen)).decode()
            ok = self.users.get(user) == password
            writer.write(b"\x01\x00" if ok else b"\x01\x01")
            if not ok:
                self.auth_failures += 1
                return
        ver, cmd, _ = await reader.readexactly(3)
        host, port = await _read_addr(reader)
        if cmd == 1:
            await self._connect(reader, writer, host, port)
        elif cmd == 3:
            await self._associate(reader, writer)
        else:
            writer.write(b"\x05\x07\x00" + _encode("0.0.0.0", 0))

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            rep = 5 if isinstance(exc, ConnectionRefusedError) else 4
            writer.write(bytes([5, rep, 0]) + _encode("0.0.0.0", 0))
            return
        self.connects.append((host, port))
        bound = up_writer.get_extra_info("sockname")
        writer.write(b"\x05\x00\x00" + _encode(bound[0], bound[1]))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
                if dst.can_write_eof():
                    dst.write_eof()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            up_writer.close()

    async def _associate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        client_ip = writer.get_extra_info("peername")[0]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((self.host, 0))
        transport, _ = await loop.create_datagram_endpoint(lambda: _Relay(self, client_ip), sock=sock)
        self.associations += 1
        try:
            # Answer with the unspecified address: clients must then use the server's address.
            writer.write(b"\x05\x00\x00" + _encode("0.0.0.0", sock.getsockname()[1]))
            while await reader.read(4096):
                pass
        finally:
            transport.close()
