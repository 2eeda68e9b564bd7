"""``check_byte_stream`` on the core's streams: socket streams and the ByteLinks of the test kit and sniffing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from tunray.bytestream import ByteStream
from tunray.link import PrefixedByteLink
from tunray.net.applink import SocketByteLink
from tunray.testing.bytestream import check_byte_stream, read_all, tcp_stream_pair
from tunray.testing.links import AppStream, byte_link_pair


@pytest.mark.timeout(60)
async def test_socket_stream_conforms() -> None:
    await check_byte_stream(tcp_stream_pair, backpressure_limit=24 << 20)


@pytest.mark.timeout(60)
async def test_memory_byte_link_conforms() -> None:
    """The test kit's in-memory ByteLink (what outbound tests hand an outbound) against its app end."""

    @contextlib.asynccontextmanager
    async def pair() -> AsyncIterator[tuple[ByteStream, ByteStream]]:
        link, app = byte_link_pair(lazy=False)
        yield link, AppStream(app)

    await check_byte_stream(pair, backpressure_limit=1 << 20)


@pytest.mark.timeout(60)
async def test_socket_byte_link_conforms() -> None:
    """A ByteLink over a socket stream (a socket inbound's link) against the app's socket."""

    @contextlib.asynccontextmanager
    async def pair() -> AsyncIterator[tuple[ByteStream, ByteStream]]:
        async with tcp_stream_pair() as (app, proxy_side):
            yield SocketByteLink(proxy_side), app

    await check_byte_stream(pair, backpressure_limit=24 << 20)


@pytest.mark.timeout(60)
async def test_prefixed_byte_link_conforms() -> None:
    """The link sniffing hands on (bytes already read are replayed first)."""

    @contextlib.asynccontextmanager
    async def pair() -> AsyncIterator[tuple[ByteStream, ByteStream]]:
        link, app = byte_link_pair(lazy=False)
        yield PrefixedByteLink(link, b""), AppStream(app)

    await check_byte_stream(pair, backpressure_limit=1 << 20)


async def test_socket_stream_aclose_with_unread_bytes_is_a_clean_end() -> None:
    """The stream reads nothing ahead; closing it with the peer's bytes unread still sends FIN, not RST."""
    async with tcp_stream_pair() as (stream, peer):
        await stream.write(b"reply")
        await peer.write(b"never read by anyone")
        await asyncio.sleep(0.05)  # in the stream's kernel receive buffer now
        await stream.aclose()
        assert await asyncio.wait_for(read_all(peer), 5) == b"reply"  # b"" after it: a FIN (a RST raises)
