"""``check_byte_stream``: the conformance suite of :class:`tunray.bytestream.ByteStream`.

A stream is checked against a *peer*: the other end of the same connection, itself a
``ByteStream`` (a socket stream for a socket, a TLS server stream for TLS, a test
WebSocket/gRPC server stream for those transports).  The caller passes a factory
``make_pair()`` returning an async context manager that yields ``(stream, peer)``
freshly connected; each check gets its own pair::

    await check_byte_stream(tcp_stream_pair)

What is checked, each with a timeout so a hang fails instead of blocking the suite:

* bytes both ways at once, intact (SHA-256), in writes of varying size;
* EOF from the peer: ``read`` returns every byte then ``b""`` (and again ``b""``),
  while this side can still write and the peer still reads (half-close);
* half-close from this side (``write_eof``): the peer reads the bytes then ``b""``,
  and can still send; a ``write`` after ``write_eof`` raises ``StreamClosed``
  (skipped with ``half_close=False``: the transport has no half-close);
* reset from the peer: ``read`` returns exactly the bytes sent before it, then raises
  ``StreamReset``; ``write`` raises ``StreamReset`` soon after;
* reset from this side: ``abort`` makes the peer's ``read`` raise ``StreamReset``;
* backpressure: with the peer not reading, ``write`` stops returning before
  *backpressure_limit* bytes were accepted, and resumes when the peer reads;
* ``abort`` while a ``read`` waits wakes it (``b""``) at once; ``abort``/``aclose``
  are idempotent.

:func:`tcp_stream_pair` is a ready factory for two :class:`~tunray.net.stream.SocketStream`
ends of a loopback TCP connection; tests of layers build their pair on top of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TypeAlias, TypeVar

from tunray.bytestream import ByteStream, StreamClosed, StreamReset
from tunray.net.stream import SocketStream, open_stream

__all__ = ["Delegating", "PairFactory", "check_byte_stream", "tcp_stream_pair"]

PairFactory: TypeAlias = Callable[[], AbstractAsyncContextManager[tuple[ByteStream, ByteStream]]]

T = TypeVar("T")
STEP = 5.0  # seconds any single step may take


class Delegating(ByteStream):
    """A stream that passes the five ``ByteStream`` calls to *inner* and nothing else.

    The base class's defaults answer the rest (no ``fileno``, nothing to splice, no bare
    socket), so a relay over it must copy; tests subclass it to watch one call.
    """

    def __init__(self, inner: ByteStream) -> None:
        self.inner = inner

    async def read(self, max_bytes: int = 65536) -> bytes:
        return await self.inner.read(max_bytes)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.write(data)

    async def write_eof(self) -> None:
        await self.inner.write_eof()

    def abort(self) -> None:
        self.inner.abort()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def tcp_socket_pair(host: str = "127.0.0.1") -> tuple[socket.socket, socket.socket]:
    """Two connected non-blocking TCP sockets on loopback (client, server); the caller owns both."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.bind((host, 0))
        listener.listen(1)
        listener.setblocking(False)
        client = socket.socket(family, socket.SOCK_STREAM)
        client.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_connect(client, listener.getsockname()[:2])
            server, _ = await loop.sock_accept(listener)
        except BaseException:
            client.close()
            raise
    server.setblocking(False)
    return client, server


@contextlib.asynccontextmanager
async def tcp_stream_pair(high_water: int = 256 * 1024) -> AsyncIterator[tuple[ByteStream, ByteStream]]:
    """Two :class:`SocketStream` ends of one loopback TCP connection (client, server)."""
    a, b = await tcp_socket_pair()
    try:
        sa: SocketStream = await open_stream(a, high_water)
    except BaseException:
        a.close()
        b.close()
        raise
    try:
        sb: SocketStream = await open_stream(b, high_water)
    except BaseException:
        sa.abort()
        b.close()
        raise
    try:
        yield sa, sb
    finally:
        sa.abort()
        sb.abort()


async def _step(aw: Awaitable[T], what: str) -> T:
    try:
        async with asyncio.timeout(STEP):
            return await aw
    except TimeoutError:
        raise AssertionError(f"{what}: no progress within {STEP:g} s") from None


async def read_all(stream: ByteStream) -> bytes:
    """Read until ``b""``."""
    out = bytearray()
    while chunk := await stream.read(1 << 16):
        out += chunk
    return bytes(out)


async def _read_until_reset(stream: ByteStream) -> tuple[bytes, BaseException | None]:
    out = bytearray()
    try:
        while chunk := await stream.read(1 << 16):
            out += chunk
    except StreamReset as exc:
        return bytes(out), exc
    return bytes(out), None


async def _send(stream: ByteStream, payload: bytes) -> None:
    sizes = (1, 7, 1000, 65536, 300_000)
    pos, i = 0, 0
    while pos < len(payload):
        n = sizes[i % len(sizes)]
        await stream.write(payload[pos : pos + n])
        pos += n
        i += 1


async def _both_ways(make_pair: PairFactory, size: int) -> None:
    async with make_pair() as (stream, peer):
        up, down = os.urandom(size), os.urandom(size)

        async def echo_side(s: ByteStream, data: bytes) -> bytes:
            sender = asyncio.ensure_future(_send(s, data))
            got = bytearray()
            while len(got) < size:
                chunk = await s.read(1 << 16)
                assert chunk, f"EOF after {len(got)} of {size} bytes"
                got += chunk
            await sender
            return bytes(got)

        a, b = await _step(asyncio.gather(echo_side(stream, up), echo_side(peer, down)), "bytes both ways")
        assert hashlib.sha256(a).digest() == hashlib.sha256(down).digest(), "peer -> stream bytes differ"
        assert hashlib.sha256(b).digest() == hashlib.sha256(up).digest(), "stream -> peer bytes differ"


async def _eof_from_peer(make_pair: PairFactory, half_close: bool) -> None:
    async with make_pair() as (stream, peer):
        await peer.write(b"last words")
        if half_close:
            await peer.write_eof()
        else:
            await peer.aclose()
        got = await _step(read_all(stream), "read to EOF")
        assert got == b"last words", f"read {got!r} before EOF"
        assert await _step(stream.read(), "read after EOF") == b"", "read after EOF is not b''"
        if half_close:
            await stream.write(b"reply after the peer's FIN")
            await stream.write_eof()
            got = await _step(read_all(peer), "peer reads after its own half-close")
            assert got == b"reply after the peer's FIN", got


async def _half_close_from_stream(make_pair: PairFactory) -> None:
    async with make_pair() as (stream, peer):
        await stream.write(b"request")
        await stream.write_eof()
        await stream.write_eof()  # idempotent
        got = await _step(read_all(peer), "peer reads to EOF")
        assert got == b"request", got
        try:
            await stream.write(b"more")
        except StreamClosed:
            pass
        else:
            raise AssertionError("write after write_eof did not raise StreamClosed")
        await peer.write(b"response")
        await peer.write_eof()
        got = await _step(read_all(stream), "stream reads after its own half-close")
        assert got == b"response", got


async def _reset_from_peer(make_pair: PairFactory) -> None:
    async with make_pair() as (stream, peer):
        await peer.write(b"0123456789abcdef")
        await asyncio.sleep(0.05)  # let the 16 bytes arrive before the reset
        peer.abort()
        got, exc = await _step(_read_until_reset(stream), "read until the reset")
        assert got == b"0123456789abcdef", f"read {got!r} before the reset"
        assert exc is not None, "the peer's reset ended the stream as a clean EOF"

        async def write_until_reset() -> None:
            while True:
                await stream.write(b"x" * 4096)
                await asyncio.sleep(0.01)

        try:
            await _step(write_until_reset(), "write after the peer's reset")
        except StreamReset:
            pass


async def _reset_from_stream(make_pair: PairFactory) -> None:
    async with make_pair() as (stream, peer):
        await stream.write(b"hello")
        got = b""
        while len(got) < 5:
            got += await _step(peer.read(5 - len(got)), "peer reads")
        stream.abort()
        stream.abort()  # idempotent
        rest, exc = await _step(_read_until_reset(peer), "peer reads until the reset")
        assert exc is not None, f"abort reached the peer as a clean EOF (after {rest!r})"
        assert await stream.read() == b"", "read after abort is not b''"


async def _backpressure(make_pair: PairFactory, limit: int) -> None:
    async with make_pair() as (stream, peer):
        accepted = 0
        chunk = b"b" * 65536

        async def writer() -> None:
            nonlocal accepted
            while accepted < limit + (4 << 20):
                await stream.write(chunk)
                accepted += len(chunk)

        task = asyncio.ensure_future(writer())
        last = -1
        while accepted != last:  # wait until the writer stops making progress
            last = accepted
            await asyncio.sleep(0.2)
            assert not task.done(), f"{accepted} bytes accepted and the peer read none: no backpressure"
        assert accepted < limit, f"{accepted} bytes accepted while the peer read none (limit {limit})"
        stalled, total = accepted, 0
        while total < stalled + (1 << 20):  # reading lets the writer go on
            data = await _step(peer.read(1 << 16), "peer reads")
            assert data, "EOF while draining"
            total += len(data)
        assert accepted > stalled, "the writer did not resume after the peer read"
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await task


async def _abort_while_reading(make_pair: PairFactory) -> None:
    async with make_pair() as (stream, _peer):
        reader = asyncio.ensure_future(stream.read())
        await asyncio.sleep(0.05)
        assert not reader.done(), "read returned with nothing sent"
        stream.abort()
        got = await _step(reader, "a read waiting when abort() was called")
        assert got == b"", f"the waiting read returned {got!r} after abort"
        stream.abort()
        await stream.aclose()  # idempotent after abort


async def _aclose_twice(make_pair: PairFactory) -> None:
    async with make_pair() as (stream, peer):
        await stream.write(b"bye")
        await stream.aclose()
        await stream.aclose()
        got = await _step(read_all(peer), "peer reads after aclose")
        assert got == b"bye", got


async def check_byte_stream(
    make_pair: PairFactory,
    *,
    half_close: bool = True,
    size: int = 1 << 20,
    backpressure_limit: int = 16 << 20,
) -> None:
    """Run every check (see the module docstring); the first failure raises ``AssertionError``.

    *half_close*: ``False`` for transports without a half-close (WebSocket); the peer then
    ends with ``aclose`` instead of ``write_eof``.  *backpressure_limit*: bytes the stream
    (with everything under it, kernel buffers included) may accept while the peer reads none.
    """
    await _both_ways(make_pair, size)
    await _eof_from_peer(make_pair, half_close)
    if half_close:
        await _half_close_from_stream(make_pair)
    await _reset_from_peer(make_pair)
    await _reset_from_stream(make_pair)
    await _backpressure(make_pair, backpressure_limit)
    await _abort_while_reading(make_pair)
    await _aclose_twice(make_pair)
