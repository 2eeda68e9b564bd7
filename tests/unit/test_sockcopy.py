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
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from tunray import splice
from tunray.bytestream import ByteStream, StreamClosed, StreamReset
from tunray.net.stream import SocketStream
from tunray.policy import LevelPolicy
from tunray.relay import SPLICE_AFTER, IdleTimeout, relay
from tunray.sockcopy import CHUNK, CHUNKS_PER_CALL, SocketCopy
from tunray.testing.bytestream import read_all, tcp_stream_pair

SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # linux/socket.h: root may exceed the sysctl maxima
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


async def test_an_app_that_reads_only_after_sending_everything_is_not_stalled_by_a_splice_switch() -> None:
    """Both ways busy at once: the app uploads 16 MiB and reads only afterwards, while the
    server streams 96 KiB back as it reads (into a small window).  The downlink waits for the app's window, so a
    switch to splice must not stop the uplink meanwhile (that would stall both ways until
    the idle timeout)."""
    up_data, down_data = os.urandom(16 << 20), os.urandom(96 << 10)
    async with joined() as (app, app_side, up_side, server):
        task = asyncio.ensure_future(relay(app_side, up_side, POLICY))

        async def app_run() -> bytes:
            await app.write(up_data)
            await app.write_eof()
            return await read_all(app)

        async def server_run() -> bytes:
            got = await read_all(server)
            await server_writer
            await server.write_eof()
            return got

        # a small window towards the app: the downlink keeps bytes before it moved SPLICE_AFTER
        assert isinstance(app, SocketStream)
        app._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        app_side._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        server_writer = asyncio.ensure_future(server.write(down_data))
        for _ in range(100):  # the server's stream fills the app's window: the downlink keeps bytes
            await asyncio.sleep(0.02)
            if up_side._read_waiter is not None and app_side._writing:
                break
        assert app_side._writing, "the downlink never waited for the app"
        got_down, got_up = await asyncio.wait_for(asyncio.gather(app_run(), server_run()), 20)
        assert got_up == up_data and got_down == down_data
        await asyncio.wait_for(task, 5)


async def test_one_readable_callback_copies_a_bounded_share() -> None:
    """A source that always has data and a destination that always takes it: one callback
    returns after CHUNKS_PER_CALL chunks, so other flows, the TUN and timers get the loop."""
    loop = asyncio.get_running_loop()
    src_peer, src = socket.socketpair()
    dst, dst_peer = socket.socketpair()
    big = 64 << 20
    for s in (src_peer, src, dst, dst_peer):
        s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, big)
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, big)
    payload = os.urandom(2 * CHUNKS_PER_CALL * CHUNK)
    src_peer.sendall(payload)
    a, u = SocketStream(src, loop, 1 << 20), SocketStream(dst, loop, 1 << 20)
    clock = _Clock()
    copy = SocketCopy(a, u, clock, None, uplink_only=2, downlink_only=2, splice_after=1 << 62, can_splice=False)
    try:
        copy.up.on_readable()
        assert copy.copied == CHUNKS_PER_CALL * CHUNK
        copy.up.on_readable()
        assert copy.copied == len(payload)
        dst_peer.setblocking(False)
        got = bytearray()
        with contextlib.suppress(BlockingIOError):
            while part := dst_peer.recv(1 << 20):
                got += part
        assert bytes(got) == payload
    finally:
        a.abort()
        u.abort()
        src_peer.close()
        dst_peer.close()


@dataclass
class _Clock:
    last: float = 0.0

    def tighten(self, seconds: float) -> None:
        pass


async def test_a_slow_reader_draining_kept_bytes_is_activity() -> None:
    """After the app's FIN only ``downlinkOnly`` (0.5 s here) guards the flow: a slow app that
    keeps taking bytes read long ago is active, so all 384 KiB arrive and nothing times out."""
    policy = LevelPolicy(handshake=4, conn_idle=30, uplink_only=0.5, downlink_only=0.5, buffer_size=1 << 20)
    data = os.urandom(384 << 10)
    async with joined() as (app, app_side, up_side, server):
        assert isinstance(app, SocketStream)
        app._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        app_side._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        task = asyncio.ensure_future(relay(app_side, up_side, policy))
        await app.write_eof()
        assert await asyncio.wait_for(read_all(server), 5) == b""
        await server.write(data)
        await server.write_eof()
        got = bytearray()
        while chunk := await asyncio.wait_for(app.read(4096), 10):
            got += chunk
            await asyncio.sleep(0.01)  # a slow app: ~400 KiB/s at most
        assert bytes(got) == data
        await asyncio.wait_for(task, 5)
