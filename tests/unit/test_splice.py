"""The relay splices socket to socket when both ends are bare kernel sockets and the flow is bulk.

Proven with :data:`tunray.splice.stats` (flows switched, bytes spliced, bytes copied
before the switch) on two loopback TCP connections joined by :func:`tunray.relay.relay`,
and through ``freedom`` with a socket-backed app link: a short flow is only copied; a bulk
one switches after :data:`~tunray.relay.SPLICE_AFTER` bytes whichever way it is bulk;
bytes intact and in order across the switch, half-close both ways, a reset on either side
passed on as a reset, a refused switch copies on and retries, a sniffed link (replaying
what it peeked) switches once the replay is copied.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from tunray import splice
from tunray.bytestream import ByteStream, StreamReset
from tunray.link import PrefixedByteLink
from tunray.net.applink import SocketByteLink
from tunray.net.stream import SocketStream
from tunray.policy import LevelPolicy
from tunray.relay import CHUNK, SPLICE_AFTER, relay
from tunray.testing.bytestream import read_all, tcp_stream_pair
from tunray.testing.echo import RESET_OFFSET, RESET_PREFIX
from tunray.testing.harness import driver_of, running

POLICY = LevelPolicy(handshake=4, conn_idle=30, uplink_only=2, downlink_only=2, buffer_size=1 << 20)


@contextlib.asynccontextmanager
async def joined() -> AsyncIterator[tuple[ByteStream, ByteStream, ByteStream, ByteStream]]:
    """(app, app's proxy end, upstream's proxy end, server): two connections for relay() to join."""
    async with tcp_stream_pair() as (app, app_side), tcp_stream_pair() as (up_side, server):
        yield app, app_side, up_side, server


@dataclass
class Count:
    uplink_bytes: int = 0
    downlink_bytes: int = 0


async def _send(stream: ByteStream, data: bytes, eof: bool = True) -> None:
    for i in range(0, len(data), 1 << 16):
        await stream.write(data[i : i + (1 << 16)])
    if eof:
        await stream.write_eof()


async def test_relay_splices_both_ways_with_half_close() -> None:
    before = (splice.stats.flows, splice.stats.bytes, splice.stats.copied)
    size = 8 << 20
    up, down = os.urandom(size), os.urandom(size)
    count = Count()
    async with joined() as (app, app_side, up_side, server):
        task = asyncio.ensure_future(relay(app_side, up_side, POLICY, count))

        async def app_end() -> bytes:
            sender = asyncio.ensure_future(_send(app, up))
            got = await read_all(app)
            await sender
            return got

        async def server_end() -> bytes:
            async def send() -> None:
                await _send(server, down, eof=False)
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
    spliced, copied = splice.stats.bytes - before[1], splice.stats.copied - before[2]
    assert spliced + copied == 2 * size + len(b"after your FIN")
    # copied: the first SPLICE_AFTER bytes (+ the chunk that crossed it) of a direction, and
    # what the other direction moved meanwhile; a switch refused while a write is pending retries
    assert copied <= 4 * (SPLICE_AFTER + CHUNK), f"{copied} bytes copied before the switch"
    assert (count.uplink_bytes, count.downlink_bytes) == (size, size + len(b"after your FIN"))


async def test_a_short_flow_is_copied_without_splicing() -> None:
    before = (splice.stats.flows, splice.stats.bytes)
    async with joined() as (app, app_side, up_side, server):
        task = asyncio.ensure_future(relay(app_side, up_side, POLICY))
        await app.write(b"x" * 32)
        assert await asyncio.wait_for(server.read(), 5) == b"x" * 32
        await server.write(b"y" * 32)
        await server.write_eof()
        assert await asyncio.wait_for(read_all(app), 5) == b"y" * 32
        await app.write_eof()
        assert await asyncio.wait_for(read_all(server), 5) == b""
        await asyncio.wait_for(task, 5)
    assert (splice.stats.flows, splice.stats.bytes) == before, "a 32-byte flow paid for a splice set-up"


@pytest.mark.parametrize("way", ["download", "upload"])
async def test_one_bulk_direction_switches_the_flow(way: str) -> None:
    """The bulk side asks; the idle side is stopped where it waits; both then splice, FIN after FIN."""
    before = (splice.stats.flows, splice.stats.bytes, splice.stats.copied)
    bulk = os.urandom(2 << 20)
    async with joined() as (app, app_side, up_side, server):
        task = asyncio.ensure_future(relay(app_side, up_side, POLICY))
        src, dst, other_src, other_dst = (server, app, app, server) if way == "download" else (app, server, server, app)
        sender = asyncio.ensure_future(_send(src, bulk, eof=False))
        got = bytearray()
        while len(got) < len(bulk):
            got += await asyncio.wait_for(dst.read(1 << 20), 5)
        await sender
        assert got == bulk
        assert splice.stats.flows == before[0] + 1, "the bulk direction did not switch to splice"
        # the idle direction, stopped while it waited, now splices too
        await other_src.write(b"ping")
        assert await asyncio.wait_for(other_dst.read(), 5) == b"ping"
        await src.write(b"tail")
        await src.write_eof()
        assert await asyncio.wait_for(read_all(dst), 5) == b"tail"
        await other_src.write_eof()
        assert await asyncio.wait_for(read_all(other_dst), 5) == b""
        await asyncio.wait_for(task, 5)
    spliced, copied = splice.stats.bytes - before[1], splice.stats.copied - before[2]
    assert spliced + copied == len(bulk) + 8
    assert copied < SPLICE_AFTER + CHUNK


async def test_spliced_reset_is_raised_and_passed_on_as_a_reset() -> None:
    before = splice.stats.flows
    bulk = os.urandom(1 << 20)
    async with joined() as (app, app_side, up_side, server):
        task = asyncio.ensure_future(relay(app_side, up_side, POLICY))
        sender = asyncio.ensure_future(_send(server, bulk, eof=False))
        got = bytearray()
        while len(got) < len(bulk):  # read as it comes: a RST would drop what still waits to be sent
            got += await asyncio.wait_for(app.read(1 << 20), 5)
        await sender
        assert got == bulk
        assert splice.stats.flows == before + 1
        await server.write(RESET_PREFIX)
        await asyncio.sleep(0.05)
        server.abort()
        with pytest.raises(StreamReset):
            await asyncio.wait_for(task, 5)
        app_side.abort()  # what an outbound does when relay() raises
        rest = b""
        with pytest.raises(StreamReset):
            while chunk := await asyncio.wait_for(app.read(), 5):
                rest += chunk
        assert rest == RESET_PREFIX


async def test_an_app_reset_after_the_switch_is_raised() -> None:
    before = splice.stats.flows
    bulk = os.urandom(1 << 20)
    async with joined() as (app, app_side, up_side, server):
        task = asyncio.ensure_future(relay(app_side, up_side, POLICY))
        await _send(app, bulk, eof=False)
        got = bytearray()
        while len(got) < len(bulk):
            got += await asyncio.wait_for(server.read(1 << 20), 5)
        assert splice.stats.flows == before + 1
        app.abort()
        with pytest.raises(StreamReset):
            await asyncio.wait_for(task, 5)
        up_side.abort()
        with pytest.raises(StreamReset):
            await asyncio.wait_for(read_all(server), 5)


class _RefusesOnce(SocketByteLink):
    """A socket link that refuses the first hand-over for splice (as one with a write pending does)."""

    __slots__ = ("refused",)

    def __init__(self, stream: SocketStream) -> None:
        super().__init__(stream)
        self.refused = 0

    def take_for_splice(self) -> bytes | None:
        if not self.refused:
            self.refused += 1
            return None
        return super().take_for_splice()


async def test_a_refused_switch_copies_on_and_retries() -> None:
    """Upstream refuses the first time: what the app side handed over is copied first, in order."""
    before = splice.stats.flows
    bulk = os.urandom(4 << 20)
    async with joined() as (app, app_side, up_side, server):
        assert isinstance(up_side, SocketStream)
        upstream = _RefusesOnce(up_side)
        task = asyncio.ensure_future(relay(app_side, upstream, POLICY))
        sender = asyncio.ensure_future(_send(app, bulk))
        got = await asyncio.wait_for(read_all(server), 10)
        await sender
        assert hashlib.sha256(got).digest() == hashlib.sha256(bulk).digest()
        assert upstream.refused == 1
        assert splice.stats.flows == before + 1, "the retry did not switch"
        await server.write(b"bye")
        await server.write_eof()
        assert await asyncio.wait_for(read_all(app), 5) == b"bye"
        await asyncio.wait_for(task, 5)


async def test_a_sniffed_link_splices_once_its_replayed_bytes_are_copied() -> None:
    """After sniffing, the app link replays what it peeked; the flow switches only after that."""
    before = splice.stats.flows
    bulk = os.urandom(2 << 20)
    async with joined() as (app, app_side, up_side, server):
        assert isinstance(app_side, SocketStream)
        link = PrefixedByteLink(SocketByteLink(app_side), b"GET / HTTP/1.1\r\n")
        task = asyncio.ensure_future(relay(link, up_side, POLICY))
        sender = asyncio.ensure_future(_send(app, bulk))
        got = await asyncio.wait_for(read_all(server), 10)
        await sender
        assert got == b"GET / HTTP/1.1\r\n" + bulk
        assert splice.stats.flows == before + 1, "the sniffed flow did not switch to splice"
        await server.write_eof()
        assert await asyncio.wait_for(read_all(app), 5) == b""
        await asyncio.wait_for(task, 5)


async def test_one_end_that_cannot_splice_falls_back_to_copying() -> None:
    before = splice.stats.flows
    bulk = os.urandom(1 << 20)
    async with joined() as (app, app_side, up_side, server):
        await app.write(b"early")
        await asyncio.sleep(0.05)
        assert await app_side.read(2) == b"ea"  # 3 bytes stay unread
        await server.write(b"bye")
        await server.write_eof()
        task = asyncio.ensure_future(relay(app_side, up_side, POLICY))
        # the downlink ends first: with one direction done the flow cannot splice, everything is copied
        assert await asyncio.wait_for(read_all(app), 5) == b"bye"
        sender = asyncio.ensure_future(_send(app, bulk))
        assert await asyncio.wait_for(read_all(server), 5) == b"rly" + bulk
        await sender
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
    before = (splice.stats.flows, splice.stats.bytes, splice.stats.copied)
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
    assert splice.stats.bytes - before[1] + splice.stats.copied - before[2] == 2 * len(payload)


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
