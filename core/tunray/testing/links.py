"""In-memory links: a :class:`~tunray.link.ByteLink`/:class:`~tunray.link.PacketLink`
for the outbound, and an *app end* for the test to play the application.

``byte_link_pair()`` returns ``(link, app)``: what the app ``send``s the outbound
``read``s, and what the outbound ``write``s the app ``recv``s.  Both directions are
bounded pipes, so backpressure is real.  ``app.accepted``/``app.reset`` show what a
stack would have answered the app's SYN.
"""

from __future__ import annotations

import asyncio

from tunray.bytestream import ByteStream, StreamReset
from tunray.link import ByteLink, LinkClosed, Packet, PacketLink
from tunray.net.address import Destination


class BytePipe:
    """A bounded byte queue: ``write`` waits above *high_water*; ``read`` returns b"" after EOF."""

    __slots__ = ("_buf", "_closed", "_eof", "_high", "_readable", "_writable")

    def __init__(self, high_water: int = 256 * 1024) -> None:
        self._buf = bytearray()
        self._eof = False
        self._closed = False
        self._high = high_water
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed or self._eof:
            raise LinkClosed("pipe closed")
        self._buf += data
        self._readable.set()
        if len(self._buf) >= self._high:
            self._writable.clear()
            await self._writable.wait()
            if self._closed:
                raise LinkClosed("pipe closed")

    def feed_eof(self) -> None:
        self._eof = True
        self._readable.set()

    def close(self) -> None:
        self._closed = True
        self._eof = True
        self._buf.clear()
        self._readable.set()
        self._writable.set()

    async def read(self, max_bytes: int = 65536) -> bytes:
        while not self._buf:
            if self._eof:
                return b""
            self._readable.clear()
            await self._readable.wait()
        data = bytes(self._buf[:max_bytes])
        del self._buf[:max_bytes]
        if len(self._buf) < self._high:
            self._writable.set()
        return data

    async def read_exactly(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = await self.read(n - len(out))
            if not chunk:
                raise EOFError(f"EOF after {len(out)} of {n} bytes")
            out += chunk
        return bytes(out)

    async def read_all(self) -> bytes:
        out = bytearray()
        while chunk := await self.read():
            out += chunk
        return bytes(out)

    @property
    def at_eof(self) -> bool:
        return self._eof and not self._buf


class AppEnd:
    """The application's side of a :class:`MemoryByteLink`."""

    def __init__(self, link: MemoryByteLink) -> None:
        self._link = link

    async def send(self, data: bytes) -> None:
        await self._link.uplink.write(data)

    def shutdown_write(self) -> None:
        self._link.uplink.feed_eof()

    def reset_flow(self) -> None:
        """The app resets the connection (a RST): the outbound's ``read`` raises after the bytes sent so far."""
        self._link.app_reset = True
        self._link.uplink.feed_eof()
        self._link.downlink.close()

    async def recv(self, max_bytes: int = 65536) -> bytes:
        return await self._link.downlink.read(max_bytes)

    async def recv_exactly(self, n: int) -> bytes:
        return await self._link.downlink.read_exactly(n)

    async def recv_all(self) -> bytes:
        return await self._link.downlink.read_all()

    @property
    def accepted(self) -> bool:
        return self._link.accepted

    @property
    def reset(self) -> bool:
        """True if the outbound reset the flow (the app would see a RST)."""
        return self._link.aborted

    @property
    def got_fin(self) -> bool:
        """True if the outbound half-closed towards the app (the app would see a FIN)."""
        return self._link.eof_sent

    @property
    def closed(self) -> bool:
        return self._link.closed

    async def wait_closed(self) -> None:
        await self._link.done.wait()


class MemoryByteLink(ByteLink):
    def __init__(self, high_water: int = 256 * 1024, *, lazy: bool = True) -> None:
        self.uplink = BytePipe(high_water)
        self.downlink = BytePipe(high_water)
        self._accepted = not lazy
        self.aborted = False
        self.closed = False
        self.eof_sent = False
        self.app_reset = False
        self.done = asyncio.Event()

    async def read(self, max_bytes: int = 65536) -> bytes:
        if self.closed:
            return b""
        data = await self.uplink.read(max_bytes)
        if not data and self.app_reset and not self.closed:
            raise LinkClosed("the app reset the connection")
        return data

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed:
            raise LinkClosed("link closed")
        if self.app_reset:
            raise LinkClosed("the app reset the connection")
        await self.downlink.write(data)

    async def write_eof(self) -> None:
        if not self.closed:
            self.eof_sent = True
        self.downlink.feed_eof()

    async def accept(self) -> None:
        if self.closed:
            raise LinkClosed("link closed")
        self._accepted = True

    def abort(self) -> None:
        if not self.closed:
            self.aborted = True
            self.closed = True
            self.uplink.close()
            self.downlink.feed_eof()
            self.done.set()

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.downlink.feed_eof()
            self.uplink.close()
            self.done.set()

    @property
    def accepted(self) -> bool:
        return self._accepted


class AppStream(ByteStream):
    """The app's end of a :class:`MemoryByteLink` as a :class:`ByteStream` (the peer in ``check_byte_stream``)."""

    def __init__(self, app: AppEnd) -> None:
        self.app = app
        self._link = app._link

    async def read(self, max_bytes: int = 65536) -> bytes:
        if self._link.app_reset:
            return b""
        data = await self.app.recv(max_bytes)
        if not data and self._link.aborted:
            raise StreamReset("the outbound reset the flow")
        return data

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._link.aborted:
            raise StreamReset("the outbound reset the flow")
        await self.app.send(bytes(data))

    async def write_eof(self) -> None:
        self.app.shutdown_write()

    def abort(self) -> None:
        self.app.reset_flow()

    async def aclose(self) -> None:
        self.app.shutdown_write()


def byte_link_pair(high_water: int = 256 * 1024, *, lazy: bool = True) -> tuple[MemoryByteLink, AppEnd]:
    link = MemoryByteLink(high_water, lazy=lazy)
    return link, AppEnd(link)


class PacketAppEnd:
    def __init__(self, link: MemoryPacketLink) -> None:
        self._link = link

    def send(self, data: bytes, dest: Destination) -> None:
        self._link.incoming.put_nowait(Packet(data, dest))

    async def recv(self) -> Packet:
        return await self._link.outgoing.get()

    def close(self) -> None:
        self._link.incoming.put_nowait(None)

    @property
    def closed(self) -> bool:
        return self._link.closed


class MemoryPacketLink(PacketLink):
    def __init__(self, queue: int = 1024) -> None:
        self.incoming: asyncio.Queue[Packet | None] = asyncio.Queue(queue)
        self.outgoing: asyncio.Queue[Packet] = asyncio.Queue(queue)
        self.closed = False
        self.dropped = 0

    async def recv(self) -> Packet | None:
        if self.closed:
            return None
        packet = await self.incoming.get()
        if packet is None:
            self.closed = True
        return packet

    def send(self, data: bytes, source: Destination) -> None:
        if self.closed:
            return
        try:
            self.outgoing.put_nowait(Packet(data, source))
        except asyncio.QueueFull:
            self.dropped += 1

    def abort(self) -> None:
        self.closed = True
        self.incoming.put_nowait(None) if not self.incoming.full() else None

    async def aclose(self) -> None:
        self.abort()


def packet_link_pair(queue: int = 1024) -> tuple[MemoryPacketLink, PacketAppEnd]:
    link = MemoryPacketLink(queue)
    return link, PacketAppEnd(link)
