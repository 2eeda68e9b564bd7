"""Behaviour of the listening inbounds on loopback, against the echo servers and freedom."""

from __future__ import annotations

import asyncio
import base64
import socket
import time
from typing import Any

import pytest
from tunray.net.address import Destination, Network, parse_host
from tunray.testing.harness import running
from tunray.testing.proxyclients import Socks5Client, free_port, parse_socks5_udp, socks5_udp

pytestmark = pytest.mark.timeout(60)
QUIET = {"loglevel": "none", "access": "none"}


def _cfg(*inbounds: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"log": QUIET, "inbounds": list(inbounds), "outbounds": [{"protocol": "freedom"}], **extra}


async def _request(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        return await asyncio.wait_for(reader.read(-1), 10)
    finally:
        writer.close()


async def test_dokodemo_udp_to_a_fixed_destination(echo_server: int) -> None:
    port = free_port(kind=socket.SOCK_DGRAM)
    inbound = {"protocol": "tunnel", "listen": "127.0.0.1", "port": port,
               "settings": {"address": "127.0.0.1", "port": echo_server, "network": "udp"}}
    async with running(_cfg(inbound)):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(5)
        try:
            for i in range(3):
                sock.sendto(b"u-%d" % i, ("127.0.0.1", port))
                data, addr = await asyncio.to_thread(sock.recvfrom, 65535)
                assert (data, addr) == (b"u-%d" % i, ("127.0.0.1", port))  # replies from the listening socket
        finally:
            sock.close()


async def test_dokodemo_port_map_and_default_port(echo_server: int) -> None:
    port = free_port()
    # the local port maps to the echo server; "address" only would keep the local port
    inbound = {"protocol": "dokodemo-door", "listen": "127.0.0.1", "port": port,
               "settings": {"address": "127.0.0.2", "portMap": {str(port): f"127.0.0.1:{echo_server}"}}}
    async with running(_cfg(inbound)):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"mapped")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(-1), 5) == b"mapped"
        finally:
            writer.close()


async def _origin(seen: list[bytes]) -> asyncio.Server:
    """An HTTP origin on loopback that records each request head and answers "ok"."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_http_allow_transparent_forwards_origin_form_by_host() -> None:
    seen: list[bytes] = []
    server = await _origin(seen)
    oport = server.sockets[0].getsockname()[1]
    on, off = free_port(), free_port()
    inbounds = (
        {"protocol": "http", "listen": "127.0.0.1", "port": on, "settings": {"allowTransparent": True}},
        {"protocol": "http", "listen": "127.0.0.1", "port": off},
    )
    request = f"GET /t HTTP/1.1\r\nHost: 127.0.0.1:{oport}\r\nConnection: close\r\n\r\n".encode()
    try:
        async with running(_cfg(*inbounds)):
            got = await _request(off, request)
            assert got.startswith(b"HTTP/1.1 400 ") and not seen, got
            got = await _request(on, request)
            assert got.startswith(b"HTTP/1.1 200 OK") and got.endswith(b"ok"), got
    finally:
        server.close()
    assert len(seen) == 1 and seen[0].startswith(b"GET /t HTTP/1.1\r\n")


async def test_http_forward_rewrites_the_request_and_keeps_alive() -> None:
    seen: list[bytes] = []
    server = await _origin(seen)
    oport = server.sockets[0].getsockname()[1]
    port = free_port()
    try:
        async with running(_cfg({"protocol": "http", "listen": "127.0.0.1", "port": port,
                                  "settings": {"accounts": [{"user": "u", "pass": "p"}]}})):
            auth = base64.b64encode(b"u:p").decode()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for i in range(2):
                writer.write(
                    f"GET http://127.0.0.1:{oport}/p{i}?q=1 HTTP/1.1\r\nHost: 127.0.0.1:{oport}\r\n"
                    f"Proxy-Authorization: Basic {auth}\r\nProxy-Connection: keep-alive\r\nX-Keep: {i}\r\n\r\n".encode()
                )
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 200 OK"), head
                assert b"connection: close" not in head.lower()
                assert await reader.readexactly(2) == b"ok"
            writer.close()
            # a wrong password: 407 and the connection closes
            got = await _request(port, f"GET http://127.0.0.1:{oport}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert got.startswith(b"HTTP/1.1 407 "), got
    finally:
        server.close()
    assert len(seen) == 2
    for i, head in enumerate(seen):
        lines = head.decode().split("\r\n")
        assert lines[0] == f"GET /p{i}?q=1 HTTP/1.1"  # origin form upstream
        lower = head.lower()
        assert b"proxy-authorization" not in lower and b"proxy-connection" not in lower
        assert b"connection: close" in lower and f"x-keep: {i}".encode() in lower


async def test_udp_associate_answers_with_the_configured_ip(echo_server: int) -> None:
    port = free_port()
    async with running(_cfg({"protocol": "socks", "listen": "127.0.0.1", "port": port, "settings": {"udp": True, "ip": "127.0.0.1"}})):
        control, sock, relay = await Socks5Client("127.0.0.1", port).associate()
        try:
            assert relay[0] == "127.0.0.1"
            target = Destination(Network.UDP, parse_host("127.0.0.1"), echo_server)
            sock.sendto(socks5_udp(target, b"x"), relay)
            sock.sendto(b"\x00\x00\x01" + socks5_udp(target, b"frag")[3:], relay)  # fragment: dropped
            got = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 2048), 5)
            assert parse_socks5_udp(got) == (target, b"x")
        finally:
            control.close()
            sock.close()


async def test_udp_associate_refused_unless_enabled() -> None:
    port = free_port()
    async with running(_cfg({"protocol": "socks", "listen": "127.0.0.1", "port": port})):
        got = await _request(port, b"\x05\x01\x00\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00")
        assert got[:2] == b"\x05\x00" and got[2:4] == b"\x05\x07"  # command not supported


async def test_user_level_sets_the_handshake_timeout() -> None:
    port = free_port()
    policy = {"levels": {"1": {"handshake": 1}}}
    async with running(_cfg({"protocol": "socks", "listen": "127.0.0.1", "port": port, "settings": {"userLevel": 1}}, policy=policy)):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        writer.write(b"\x05\x01")  # an unfinished greeting
        try:
            assert await asyncio.wait_for(reader.read(-1), 5) == b""  # closed, as Xray closes
            assert 0.8 < time.monotonic() - started < 3, "level 1's 1 s handshake timeout applies"
        finally:
            writer.close()


async def test_default_listen_is_dual_stack(echo_server: int) -> None:
    port = free_port()
    async with running(_cfg({"protocol": "socks", "port": port})):  # no "listen": every address
        for host in ("127.0.0.1", "::1"):
            reader, writer = await Socks5Client(host, port).open_tcp(Destination(Network.TCP, parse_host("127.0.0.1"), echo_server))
            try:
                writer.write(b"v" + host.encode())
                writer.write_eof()
                assert await asyncio.wait_for(reader.read(-1), 5) == b"v" + host.encode()
            finally:
                writer.close()


async def test_keep_alive_does_not_wait_for_a_server_that_keeps_its_side_open() -> None:
    """The next request is served once the response is complete, even if the origin ignores
    ``Connection: close`` (the old flow ends by itself later)."""
    held: list[asyncio.StreamWriter] = []

    async def sticky(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        held.append(writer)  # never closed by the origin

    server = await asyncio.start_server(sticky, "127.0.0.1", 0)
    oport = server.sockets[0].getsockname()[1]
    port = free_port()
    policy = {"levels": {"0": {"downlinkOnly": 30, "connIdle": 60}}}
    try:
        async with running(_cfg({"protocol": "http", "listen": "127.0.0.1", "port": port}, policy=policy)):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                for _ in range(3):
                    started = time.monotonic()
                    writer.write(f"GET http://127.0.0.1:{oport}/ HTTP/1.1\r\nHost: 127.0.0.1:{oport}\r\n\r\n".encode())
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                    assert head.startswith(b"HTTP/1.1 200 OK") and await reader.readexactly(5) == b"hello"
                    assert time.monotonic() - started < 3, "the next request waited for the old flow"
            finally:
                writer.close()
    finally:
        for w in held:
            w.close()
        server.close()
