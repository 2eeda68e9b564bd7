"""The relay splices socket to socket when both ends are bare kernel sockets.

Proven with :data:`tunray.splice.stats` (flows and bytes spliced) on two loopback TCP
connections joined by :func:`tunray.relay.relay`, and through ``freedom`` with a
socket-backed app link: bytes intact both ways, half-close both ways, a reset passed on
as a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator

import pytest
from tunray import splice
from tunray.bytestream import ByteStream, StreamReset
from tunray.net.applink import SocketByteLink
from tunray.policy import LevelPolicy
from tunray.relay import relay
from tunray.testing.bytestream import read_all, tcp_stream_pair
from tunray.testing.echo import RESET_OFFSET, RESET_PREFIX
from tunray.testing.harness import driver_of, running

POLICY = LevelPolicy(handshake=4, conn_idle=30, uplink_only=2, downlink_only=2, buffer_size=1 << 20)


@contextlib.asynccontextmanager
async def joined() -> AsyncIterator[tuple[ByteStream, ByteStream, ByteStream, ByteStream]]:
    """(app, app's proxy end, upstream's proxy end, server): two connections for relay() to join."""
    async with tcp_stream_pair() as (app, app_side), tcp_stream_pair() as (up_side, server):
        yield app, app_side, up_side, server


async def test_relay_splices_both_ways_with_half_close() -> None:
    before = (splice.stats.flows, splice.stats.bytes)
    size = 8 << 20
    up, down = os.urandom(size), os.urandom(size)
    async with joined() as (app, app_side, up_side, server):
        task = asyncio.ensure_future(relay(app_side, up_side, POLICY))

        async def app_end() -> bytes:
            async def send() -> None:
                for i in range(0, size, 1 << 16):
                    await app.write(up[i : i + (1 << 16)])
                await app.write_eof()

            sender = asyncio.ensure_future(send())
            got = await read_all(app)
            await sender
            return got

        async def server_end() -> bytes:
            async def send() -> None:
                for i in range(0, size, 1 << 16):
                    await server.write(down[i : i + (1 << 16)])
                await asyncio.sleep(0.1)  # the app half-closed first: its FIN came through alone
                await server.write(b"after your FIN")
                await server.write_eof()

            sender = asyncio.ensure_future(send())
            got = await read_all(server)
            await sender
            return got

        at_app, at_server = await asyncio.wait_for(asyncio.gather(app_end(), server_end()), 20)
        await asyncio.wait_for(task, 5)
    assert hashlib.sha256(at_server).digest() == hashlib.sha256(up).digest()
    assert at_app == down + b"after your FIN"
    assert splice.stats.flows == before[0] + 1, "the relay copied instead of splicing"
    assert splice.stats.bytes - before[1] == 2 * size + len(b"after your FIN")


async def test_spliced_reset_is_raised_and_passed_on_as_a_reset() -> None:
    before = splice.stats.flows
    async with joined() as (app, app_side, up_side, server):
        task = asyncio.ensure_future(relay(app_side, up_side, POLICY))
        await server.write(RESET_PREFIX)
        await asyncio.sleep(0.05)
        server.abort()
        with pytest.raises(StreamReset):
            await asyncio.wait_for(task, 5)
        app_side.abort()  # what an outbound does when relay() raises
        got = b""
        with pytest.raises(StreamReset):
            while chunk := await asyncio.wait_for(app.read(), 5):
                got += chunk
        assert got == RESET_PREFIX
    assert splice.stats.flows == before + 1


async def test_one_end_that_cannot_splice_falls_back_to_copying() -> None:
    before = splice.stats.flows
    async with joined() as (app, app_side, up_side, server):
        await app.write(b"early")
        await asyncio.sleep(0.05)
        assert await app_side.read(2) == b"ea"  # 3 bytes stay buffered in the stream
        await server.write(b"bye")
        await server.write_eof()  # upstream already at EOF: no splice, the taken bytes are copied
        await asyncio.sleep(0.05)
        task = asyncio.ensure_future(relay(app_side, up_side, POLICY))
        await app.write(b" more")
        await app.write_eof()
        assert await asyncio.wait_for(read_all(server), 5) == b"rly more"
        assert await asyncio.wait_for(read_all(app), 5) == b"bye"
        await asyncio.wait_for(task, 5)
    assert splice.stats.flows == before


def _cfg() -> dict[str, object]:
    return {
        "log": {"loglevel": "none", "access": "none"},
        "inbounds": [{"protocol": "driver"}],
        "outbounds": [{"protocol": "freedom"}],
        "policy": {"levels": {"0": {"handshake": 3, "connIdle": 30, "uplinkOnly": 2, "downlinkOnly": 2}}},
    }


async def test_freedom_splices_a_socket_link(echo_server: int) -> None:
    before = (splice.stats.flows, splice.stats.bytes)
    payload = os.urandom(4 << 20)
    async with running(_cfg()) as rt, tcp_stream_pair() as (app, app_side):
        task = driver_of(rt).open_link("10.0.0.2:1000", f"tcp:127.0.0.1:{echo_server}", SocketByteLink(app_side))

        async def send() -> None:
            await app.write(payload)
            await app.write_eof()

        sender = asyncio.ensure_future(send())
        got = await asyncio.wait_for(read_all(app), 20)
        await sender
        await asyncio.wait_for(task, 5)
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    assert splice.stats.flows == before[0] + 1
    assert splice.stats.bytes - before[1] == 2 * len(payload)


async def test_freedom_splice_passes_an_upstream_reset_on(echo_server: int) -> None:
    async with running(_cfg()) as rt, tcp_stream_pair() as (app, app_side):
        target = f"tcp:127.0.0.1:{echo_server + RESET_OFFSET}"
        task = driver_of(rt).open_link("10.0.0.2:1001", target, SocketByteLink(app_side))
        got = b""
        with pytest.raises(StreamReset):
            while chunk := await asyncio.wait_for(app.read(), 5):
                got += chunk
        await asyncio.wait_for(task, 5)
    assert got == RESET_PREFIX
