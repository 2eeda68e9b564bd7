"""Links over the app's own sockets, for inbounds that listen (socks, http, dokodemo-door).

:class:`SocketByteLink` is a :class:`~tunray.link.ByteLink` over an accepted TCP (or Unix)
connection's :class:`~tunray.net.stream.SocketStream`.  It replays the bytes read past the
inbound's handshake first, and it can be lazy: the handshake's success reply (SOCKS
``succeeded``, ``HTTP/1.1 200``) is written by :meth:`accept`, once the outbound is up, and
an unroutable or undialable flow gets the protocol's refusal reply from :meth:`abort`
instead of a success followed by a close.

:class:`QueuePacketLink` is a :class:`~tunray.link.PacketLink` fed by the inbound's own
UDP reader (``put``) and answering through a callback, so one class serves SOCKS5 UDP
ASSOCIATE and dokodemo-door UDP alike.  Its queue is bounded: a full queue drops, as a
network would, and counts the drop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from tunray.link import ByteLink, LinkClosed, Packet, PacketLink
from tunray.net.address import Destination
from tunray.net.stream import SocketStream


class SocketByteLink(ByteLink):
    """See the module docstring.  The link owns *stream* and closes it."""

    __slots__ = ("_accepted", "_prefix", "_refuse", "_reply", "_stream")

    def __init__(
        self,
        stream: SocketStream,
        prefix: bytes = b"",
        *,
        accept_reply: bytes | None = None,
        refuse_reply: bytes | None = None,
    ) -> None:
        self._stream = stream
        self._prefix = prefix
        self._reply = accept_reply
        self._refuse = refuse_reply
        self._accepted = accept_reply is None

    async def read(self, max_bytes: int = 65536) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix[:max_bytes], self._prefix[max_bytes:]
            return data
        return await self._stream.read(max_bytes)  # the app's RST raises StreamReset

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self._stream.write(data)
        except ConnectionError as exc:
            raise LinkClosed(str(exc)) from None

    async def write_eof(self) -> None:
        await self._stream.write_eof()

    async def accept(self) -> None:
        if self._accepted:
            return
        self._accepted = True
        if self._reply:
            await self.write(self._reply)

    def abort(self) -> None:
        if not self._accepted and self._refuse:
            self._accepted = True
            self._stream.send_and_close(self._refuse)
            return
        self._accepted = True
        self._stream.reset()

    async def aclose(self) -> None:
        await self._stream.aclose()

    def fileno(self) -> int | None:
        return self._stream.fileno()

    def socket_stream(self) -> SocketStream | None:
        stream = self._stream
        return stream if self._accepted and not self._prefix else None

    def take_for_splice(self) -> bytes | None:
        if not self._accepted:
            return None
        taken = self._stream.take_for_splice()
        if taken is None:
            return None
        data, self._prefix = self._prefix + taken, b""
        return data

    async def drain_for_splice(self) -> None:
        await self._stream.drain_for_splice()

    @property
    def accepted(self) -> bool:
        return self._accepted


class QueuePacketLink(PacketLink):
    """Datagrams put by the inbound's reader; replies go to *reply(data, source)*."""

    __slots__ = ("_closed", "_limit", "_on_close", "_queue", "_reply", "_waiter", "dropped")

    def __init__(
        self,
        reply: Callable[[bytes, Destination], None],
        *,
        limit: int = 1024,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._reply = reply
        self._queue: deque[Packet] = deque()
        self._limit = limit
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._on_close = on_close
        self.dropped = 0

    def put(self, data: bytes, destination: Destination) -> None:
        """One datagram from the app to *destination*; dropped when the queue is full."""
        if self._closed:
            return
        if len(self._queue) >= self._limit:
            self.dropped += 1
            return
        self._queue.append(Packet(data, destination))
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def recv(self) -> Packet | None:
        while not self._queue:
            if self._closed:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._queue.popleft()

    def send(self, data: bytes, source: Destination) -> None:
        if self._closed:
            return
        try:
            self._reply(data, source)
        except OSError:
            self.dropped += 1

    @property
    def closed(self) -> bool:
        return self._closed

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)
        if self._on_close is not None:
            self._on_close()

    async def aclose(self) -> None:
        self.abort()
