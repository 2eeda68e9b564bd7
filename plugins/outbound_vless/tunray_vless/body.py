"""The VLESS body over a connected server stream: response header, Vision, raw switch.

Theory of operation.  :class:`Body` has the shape of :class:`tunray.relay.Stream`
(``read``/``write``/``write_eof``), so :func:`tunray.relay.relay` carries a TCP flow
and the UDP pumps reuse it for their framed bytes.

``send_first(header, payload)`` writes the request header and the first payload in
one write (Xray buffers them together).  ``read`` first consumes the server's
response header (``00 00``): a different version is a :class:`~tunray_vless.codec.CodecError`,
and a server that closes before answering (wrong id, refused destination) raises
:class:`ServerClosed` so the app's flow is reset at once instead of lingering.

With Vision (``xtls-rprx-vision``) the uplink is padded by a
:class:`~tunray_vless.codec.VisionPadder` that ends padding with command 01: the
client never leaves the outer TLS for writing, which every Vision server accepts.
The downlink is unpadded; while the peer may still send a command-02 (direct) block
it is read one TLS record at a time (``read_record``), so that when the
:class:`~tunray_vless.codec.DirectSwitch` appears no byte after the block has been
given to the TLS layer.  Then ``detach_raw()`` hands over the TLS stream's unread
plaintext, its undecrypted bytes and the socket stream, and reading continues on the
socket.  The TLS stream is a :class:`tunray.bytestream.RecordStream` (the core
protocol ``security:tls`` and REALITY implement), checked once per flow.

Ends.  A reset of the server connection (any layer) is raised by ``read``/``write``
as :class:`~tunray.bytestream.StreamReset`; the relay then resets the app's flow.
"""

from __future__ import annotations

import random

from loguru import logger
from tunray.bytestream import ByteStream, RecordStream

from tunray_vless.codec import DirectSwitch, ResponseParser, TrafficState, VisionPadder, VisionUnpadder
from tunray_vless.settings import ServerSpec


class ServerClosed(ConnectionError):
    """The server closed the connection before its response header."""


class VisionUnavailable(ConnectionError):
    """Vision asked for over a stream that is not TLS 1.3 directly on a socket."""


def check_vision_stream(stream: ByteStream) -> None:
    """Raise :class:`VisionUnavailable` unless *stream* is a record stream (TLS, REALITY) with TLS 1.3."""
    if not isinstance(stream, RecordStream):
        raise VisionUnavailable("XTLS Vision needs TLS (or REALITY) directly over raw TCP, as in Xray")
    version = stream.tls_version
    if version != "TLSv1.3":
        raise VisionUnavailable(f"XTLS Vision needs the outer TLS to be TLS 1.3, found {version or 'unknown'}")


class Body:
    __slots__ = ("_header", "_padder", "_pending", "_raw", "_stream", "_unpadder", "switched")

    def __init__(self, stream: ByteStream, spec: ServerSpec, rng: random.Random | None = None) -> None:
        self._stream = stream
        self._header: ResponseParser | None = ResponseParser()
        self._pending: list[bytes] = []
        self._raw: ByteStream | None = None
        self.switched = False
        if spec.vision:
            state = TrafficState(spec.user_id)
            self._padder: VisionPadder | None = VisionPadder(state, rng, spec.seed, allow_direct=False)
            self._unpadder: VisionUnpadder | None = VisionUnpadder(state)
        else:
            self._padder = None
            self._unpadder = None

    async def send_first(self, header: bytes, payload: bytes) -> None:
        padder = self._padder
        if padder is None:
            await self._stream.write(header + payload)
        elif payload:
            await self._stream.write(header + padder.write(payload))
        else:
            await self._stream.write(header + padder.write_padding_only())

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        padder = self._padder
        if padder is not None and padder.padding:
            await self._stream.write(padder.write(bytes(data)))
        else:
            await self._stream.write(data)

    async def write_eof(self) -> None:
        await self._stream.write_eof()

    async def _read_upstream(self, max_bytes: int) -> bytes:
        unpadder = self._unpadder
        stream = self._stream
        if unpadder is not None and unpadder.padded and isinstance(stream, RecordStream):
            return await stream.read_record(max_bytes)
        return await stream.read(max_bytes)

    async def read(self, max_bytes: int = 65536) -> bytes:
        while True:
            if self._pending:
                return self._pending.pop(0)
            if self._raw is not None:
                return await self._raw.read(max_bytes)
            data = await self._read_upstream(max_bytes)
            header = self._header
            if header is not None:
                if not data:
                    raise ServerClosed("the VLESS server closed the connection without a response (wrong id?)")
                body = header.feed(data)
                if body is None:
                    continue
                self._header = None
                data = body
                if not data:
                    continue
            unpadder = self._unpadder
            if unpadder is None or not data:
                return data
            switch = False
            for item in unpadder.feed(data):
                if isinstance(item, DirectSwitch):
                    switch = True  # bytes after the block (normally none) come before the carried-over ones
                else:
                    self._pending.append(item)
            if switch:
                self._switch()

    def _switch(self) -> None:
        stream = self._stream
        assert isinstance(stream, RecordStream)  # check_vision_stream ran before any Vision read
        plain, raw, inner = stream.detach_raw()
        self._raw = inner
        self.switched = True
        for chunk in (plain, raw):
            if chunk:
                self._pending.append(chunk)
        logger.debug("vless: vision downlink switched to the raw socket ({} bytes carried over)", len(plain) + len(raw))
