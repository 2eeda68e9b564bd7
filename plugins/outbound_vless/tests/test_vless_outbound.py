"""The outbound's wire choices, against a scripted VLESS server on loopback (phase-1 decoders)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from tunray.net.address import Destination, Network, parse_host
from tunray.testing.harness import driver_of, running
from tunray_vless.codec import Command, PacketDecoder, Request, decode_request, encode_packet
from vless_servers import until

UID = "27848739-7e62-4138-9fd3-098a63964b6b"
Script = Callable[[Request, bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def _fake_server(script: Script, seen: list[tuple[Request, bytes, float]]) -> AsyncIterator[int]:
    """Decode each request header; record (request, bytes that came with it, arrival); run *script*."""
    tasks: set[asyncio.Task[Any]] = set()
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        writers.append(writer)
        try:
            buf = b""
            while (parsed := decode_request(buf)) is None:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                buf += chunk
            request, end = parsed
            seen.append((request, buf[end:], time.monotonic()))
            await script(request, buf[end:], reader, writer)
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
        for w in writers:
            w.transport.abort()  # ends the handlers' reads (cancelling them would log an error)
        if tasks:
            await asyncio.wait(tasks, timeout=2)


def _cfg(port: int, flow: str = "") -> dict[str, Any]:
    return {
        "log": {"loglevel": "none", "access": "none"},
        "inbounds": [{"protocol": "driver"}],
        "outbounds": [
            {
                "protocol": "vless",
                "settings": {"address": "127.0.0.1", "port": port, "id": UID, "encryption": "none", "flow": flow},
            }
        ],
        "policy": {"levels": {"0": {"handshake": 2, "connIdle": 10, "uplinkOnly": 1, "downlinkOnly": 1}}},
    }


async def _plain_udp_echo(request: Request, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    decoder = PacketDecoder()
    writer.write(b"\x00\x00")
    data = first
    while True:
        for packet in decoder.feed(data):
            writer.write(encode_packet(packet))
        data = await reader.read(65536)
        if not data:
            return


async def test_udp_53_uses_plain_framing_other_ports_xudp() -> None:
    seen: list[tuple[Request, bytes, float]] = []
    async with _fake_server(_plain_udp_echo, seen) as port, running(_cfg(port)) as rt:
        drv = driver_of(rt)
        target = Destination(Network.UDP, parse_host("192.0.2.7"), 53)
        app, task = drv.open_udp("10.0.0.2:5353", target)
        app.send(b"query", target)
        reply = await asyncio.wait_for(app.recv(), 3)
        assert reply.data == b"query" and reply.peer == target
        app.close()
        await asyncio.wait_for(task, 3)
        other = Destination(Network.UDP, parse_host("192.0.2.7"), 5000)
        app, task = drv.open_udp("10.0.0.2:5354", other)
        app.send(b"data", other)
        await until(lambda: len(seen) == 2)
        app.close()
        await asyncio.wait_for(task, 3)
    (udp, udp_first, _), (mux, mux_first, _) = seen
    assert udp.command is Command.UDP and udp.destination == target and udp_first == encode_packet(b"query")
    assert mux.command is Command.MUX and str(mux.destination) == "tcp:v1.mux.cool:0"
    # XUDP New frame: session 0, New, data, UDP, 192.0.2.7:5000, then the 8-byte GlobalID
    assert mux_first[2:9] == b"\x00\x00\x01\x01\x02\x13\x88" and mux_first[9:14] == b"\x01\xc0\x00\x02\x07"
    assert mux_first.endswith(b"\x00\x04data")


async def test_header_goes_with_first_payload_or_alone_after_500_ms() -> None:
    seen: list[tuple[Request, bytes, float]] = []

    async def echo(request: Request, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"\x00\x00" + first)
        while data := await reader.read(65536):
            writer.write(data)

    async with _fake_server(echo, seen) as port, running(_cfg(port)) as rt:
        drv = driver_of(rt)
        target = Destination(Network.TCP, parse_host("example.com"), 443)
        app, task = drv.open_tcp("10.0.0.2:4000", target)
        await until(lambda: app.accepted)
        await app.send(b"GET /")
        assert await app.recv_exactly(5) == b"GET /"
        app.shutdown_write()
        await asyncio.wait_for(task, 5)
        # an app that waits: the header leaves alone after ~500 ms
        app, task = drv.open_tcp("10.0.0.2:4001", target)
        started = time.monotonic()
        await until(lambda: len(seen) >= 2)
        waited = seen[1][2] - started
        await app.send(b"late")
        assert await app.recv_exactly(4) == b"late"
        app.shutdown_write()
        await asyncio.wait_for(task, 5)
    (req, first, _), (_, alone, _) = seen
    assert req.command is Command.TCP and req.destination == target and first == b"GET /"
    assert alone == b"" and 0.4 < waited < 1.5


async def test_bad_response_version_resets_the_flow() -> None:
    seen: list[tuple[Request, bytes, float]] = []

    async def bad(request: Request, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"\x01\x00hello")
        await reader.read()

    async with _fake_server(bad, seen) as port, running(_cfg(port)) as rt:
        app, task = driver_of(rt).open_tcp("10.0.0.2:4002", "tcp:192.0.2.1:80")
        await until(lambda: app.accepted)
        await app.send(b"x")
        await asyncio.wait_for(task, 3)
        assert app.reset
