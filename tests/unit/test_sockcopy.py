"""relay() between two bare sockets copies from loop callbacks (tunray.sockcopy): same semantics.

Two loopback TCP connections joined by :func:`tunray.relay.relay`, both ends
:class:`~tunray.net.stream.SocketStream`: the flow runs with no task besides the caller's,
bytes arrive intact both ways, each half-close passes on as a FIN after every byte, a reset
on either side (also one that arrives right behind data) ends the relay with
:class:`StreamReset` after the data went through, a peer that stops reading stops the
copy (bounded, then everything arrives), the idle timeout holds, a stream closed by its
owner ends the relay, and a stream with a write still pending is copied by the loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from tunray import splice
from tunray.bytestream import ByteStream, StreamClosed, StreamReset
from tunray.net.stream import SocketStream
from tunray.policy import LevelPolicy
from tunray.relay import SPLICE_AFTER, IdleTimeout, relay
from tunray.testing.bytestream import read_all, tcp_stream_pair

POLICY = LevelPolicy(handshake=4, conn_idle=30, uplink_only=2, downlink_only=2, buffer_size=1 << 20)


@dataclass
class Count:
    uplink_bytes: int = 0
    downlink_bytes: int = 0


@contextlib.asynccontextmanager
async def joined() -> AsyncIterator[tuple[ByteStream, SocketStream, SocketStream, ByteStream]]:
    """(app, app's proxy end, upstream's proxy end, server)."""
    async with tcp_stream_pair() as (app, app_side), tcp_stream_pair() as (up_side, server):
        assert isinstance(app_side, SocketStream) and isinstance(up_side, SocketStream)
        yield app, app_side, up_side, server


async def _read_exactly(stream: ByteStream, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = await asyncio.wait_for(stream.read(n - len(got)), 5)
        assert chunk, f"EOF after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


async def _read_until_reset(stream: ByteStream) -> bytes:
    got = bytearray()
    with pytest.raises(StreamReset):
        while chunk := await asyncio.wait_for(stream.read(), 5):
            got += chunk
    return bytes(got)


async def test_echo_flow_both_ways_with_no_extra_task() -> None:
    count = Count()
    async with joined() as (app, app_side, up_side, server):
        task = asyncio.ensure_future(relay(app_side, up_side, POLICY, count))
        await asyncio.sleep(0)
        tasks_during = len(asyncio.all_tasks())
        await app.write(b"x" * 32)
        assert await _read_exactly(server, 32) == b"x" * 32
        await server.write(b"y" * 32)
        assert await _read_exactly(app, 32) == b"y" * 32
        assert len(asyncio.all_tasks()) == tasks_during, "the relay started a task of its own"
        await app.write_eof()
        assert await asyncio.wait_for(read_all(server), 5) == b"", "the app's FIN did not reach the server"
        await server.write(b"late")  # the downlink still runs after the uplink's FIN
        await server.write_eof()
        assert await asyncio.wait_for(read_all(app), 5) == b"late"
        await asyncio.wait_for(task, 5)
    assert (count.uplink_bytes, count.downlink_bytes) == (32, 36)


@pytest.mark.parametrize("first", ["server", "app"])
async def test_each_half_close_passes_on_after_every_byte(first: str) -> None:
    data = os.urandom(40_000)  # < SPLICE_AFTER: copied all the way
    async with joined() as (app, app_side, up_side, server):
        task = asyncio.ensure_future(relay(app_side, up_side, POLICY))
        a, b = (server, app) if first == "server" else (app, server)
        await a.write(data)
        await a.write_eof()
        assert await asyncio.wait_for(read_all(b), 5) == data
        assert not task.done(), "one direction's end ended the flow"
        await b.write(b"reply after FIN")
        await b.write_eof()
        assert await asyncio.wait_for(read_all(a), 5) == b"reply after FIN"
        await asyncio.wait_for(task, 5)


@pytest.mark.parametrize("side", ["server", "app"])
async def test_a_reset_right_behind_data_ends_the_relay_as_a_reset(side: str) -> None:
    async with joined() as (app, app_side, up_side, server):
        task = asyncio.ensure_future(relay(app_side, up_side, POLICY))
        resetting, other, other_proxy_end = (server, app, app_side) if side == "server" else (app, server, up_side)
        await resetting.write(b"last words")
        resetting.abort()  # the RST comes with (or right behind) the data: one readiness event
        with pytest.raises(StreamReset):
            await asyncio.wait_for(task, 5)
        other_proxy_end.abort()  # what the outbound and the dispatcher do when relay() raises
        assert await _read_until_reset(other) == b"last words"


async def test_a_peer_that_stops_reading_stops_the_copy() -> None:
    count = Count()
    async with joined() as (app, app_side, up_side, server):
        task = asyncio.ensure_future(relay(app_side, up_side, POLICY, count))
        sent = 0
        chunk = os.urandom(1 << 16)

        async def writer() -> None:
            nonlocal sent
            for _ in range(512):  # 32 MiB: far more than the kernel buffers on the way hold
                await app.write(chunk)
                sent += len(chunk)

        w = asyncio.ensure_future(writer())
        last = -1
        while count.uplink_bytes != last:  # the copy stalls once the server's window is full
            last = count.uplink_bytes
            await asyncio.sleep(0.2)
        assert count.uplink_bytes < 512 * len(chunk), "the relay read everything while nobody read it"
        assert not w.done(), "the app could write everything while the server read nothing"
        got = 0
        while got < 512 * len(chunk):
            part = await asyncio.wait_for(server.read(1 << 20), 5)
            assert part
            got += len(part)
        await w
        assert got == sent
        await app.write_eof()
        await server.write_eof()
        assert await asyncio.wait_for(read_all(app), 5) == b""
        await asyncio.wait_for(task, 10)


async def test_idle_timeout_while_copying_from_callbacks() -> None:
    policy = LevelPolicy(handshake=4, conn_idle=0.2, uplink_only=0.1, downlink_only=0.1)
    async with joined() as (app, app_side, up_side, server):
        task = asyncio.ensure_future(relay(app_side, up_side, policy))
        await app.write(b"ping")
        assert await _read_exactly(server, 4) == b"ping"
        with pytest.raises(IdleTimeout):
            await asyncio.wait_for(task, 2)


async def test_a_stream_closed_by_its_owner_ends_the_relay() -> None:
    async with joined() as (app, app_side, up_side, server):
        task = asyncio.ensure_future(relay(app_side, up_side, POLICY))
        await app.write(b"ping")
        assert await _read_exactly(server, 4) == b"ping"
        app_side.abort()  # e.g. the system stack resetting its flows at shutdown
        with pytest.raises(StreamClosed):
            await asyncio.wait_for(task, 2)
        up_side.abort()
        assert await _read_until_reset(server) == b""


async def test_a_stream_with_a_write_pending_is_copied_by_the_loops() -> None:
    """Not idle at the start (bytes kept for the writer): the copy loops run, bytes stay in order."""
    async with joined() as (app, app_side, up_side, server):
        chunk = os.urandom(1 << 16)
        written = bytearray()
        while up_side._wbuf is None:  # until the kernel leaves some to the stream (nobody reads yet)
            await asyncio.wait_for(up_side.write(chunk), 5)
            written += chunk
        tasks_before = len(asyncio.all_tasks())
        task = asyncio.ensure_future(relay(app_side, up_side, POLICY))
        await asyncio.sleep(0)
        assert len(asyncio.all_tasks()) == tasks_before + 2, "the copy loops should run (a downlink task)"
        reader = asyncio.ensure_future(read_all(server))
        await app.write(b"after")
        await app.write_eof()
        await server.write_eof()
        assert await asyncio.wait_for(reader, 10) == bytes(written) + b"after"
        await asyncio.wait_for(task, 5)


async def test_bulk_switches_to_splice_from_callbacks() -> None:
    before = splice.stats.flows
    bulk = os.urandom(4 * SPLICE_AFTER)
    async with joined() as (app, app_side, up_side, server):
        task = asyncio.ensure_future(relay(app_side, up_side, POLICY))
        sender = asyncio.ensure_future(app.write(bulk))
        assert await _read_exactly(server, len(bulk)) == bulk
        await sender
        assert splice.stats.flows == before + 1, "a bulk flow did not switch"
        await server.write(b"back")
        await server.write_eof()
        await app.write_eof()
        assert await asyncio.wait_for(read_all(app), 5) == b"back"
        assert await asyncio.wait_for(read_all(server), 5) == b""
        await asyncio.wait_for(task, 5)
