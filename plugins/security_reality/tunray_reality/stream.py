"""The asyncio adapter over :class:`~tunray_reality.client.Tls13Client`: a REALITY stream.

It is a :class:`tunray.bytestream.RecordStream`, like ``security:tls``'s stream, so
protocols, XTLS Vision included, use either alike.  Each
``read_record`` returns the plaintext of at most one record, and ``detach_raw``
returns (unread plaintext, received-but-undecrypted bytes, inner stream): Vision's
downlink switch to raw TCP happens at the exact record boundary.

Reset versus end: a close_notify from the server is a clean end (``b""``); the
connection ending without one, a bad record or an alert raise
:class:`~tunray_reality.errors.TlsError`, a :class:`~tunray.bytestream.StreamReset`
(the relay resets the app's flow); a reset of the inner stream is raised as it is.
"""

from __future__ import annotations

from tunray.bytestream import ByteStream, RecordStream, StreamClosed

from tunray_reality.client import AppData, HandshakeDone, PeerClosed, Tls13Client
from tunray_reality.errors import TlsError

CHUNK = 256 * 1024


class RealityStream(RecordStream):
    """See the module docstring.  Created by :func:`run_handshake`."""

    __slots__ = ("_client", "_closed", "_closed_read", "_detached", "_inner", "_plain", "_write_closed")

    def __init__(self, inner: ByteStream, client: Tls13Client) -> None:
        self._inner = inner
        self._client = client
        self._plain = b""
        self._detached = False
        self._closed = False
        self._closed_read = False
        self._write_closed = False

    @property
    def tls_version(self) -> str:
        return "TLSv1.3"

    @property
    def alpn(self) -> str | None:
        return self._client.alpn

    @property
    def inner(self) -> ByteStream:
        return self._inner

    @property
    def buffered(self) -> int:
        return len(self._plain)

    async def _flush(self) -> None:
        out = self._client.data_to_send()
        if out:
            await self._inner.write(out)

    async def read_record(self, max_bytes: int = 65536) -> bytes:
        """Plaintext from at most one record; ``b""`` after the server's close_notify."""
        if self._detached:
            raise RuntimeError("REALITY reading was detached (detach_raw)")
        if self._plain:
            data, self._plain = self._plain[:max_bytes], self._plain[max_bytes:]
            return data
        if self._closed_read or self._closed:
            return b""
        client = self._client
        while True:
            event = client.next_event()
            if isinstance(event, AppData):
                if not event.data:
                    continue
                if len(event.data) > max_bytes:
                    self._plain = event.data[max_bytes:]
                    return event.data[:max_bytes]
                return event.data
            if isinstance(event, PeerClosed):
                self._closed_read = True
                return b""
            if event is None:
                await self._flush()  # e.g. a KeyUpdate answer
                data = await self._inner.read(CHUNK)
                if self._closed:
                    return b""
                if data:
                    client.feed(data)
                else:
                    client.feed_eof()

    async def read(self, max_bytes: int = 65536) -> bytes:
        """Plaintext of one or more records already received (up to *max_bytes*)."""
        first = await self.read_record(max_bytes)
        if not first or len(first) >= max_bytes:
            return first
        parts = [first]
        size = len(first)
        client = self._client
        while size < max_bytes:
            event = client.next_event()
            if isinstance(event, AppData):
                data = event.data
                if size + len(data) > max_bytes:
                    cut = max_bytes - size
                    self._plain = data[cut:]
                    data = data[:cut]
                parts.append(data)
                size += len(data)
            else:
                if isinstance(event, PeerClosed):
                    self._closed_read = True
                break
        return b"".join(parts)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._write_closed or self._closed:
            raise StreamClosed("REALITY write side closed")
        await self._inner.write(self._client.seal(data))

    async def write_eof(self) -> None:
        """Send close_notify (TLS 1.3 lets the server keep sending).  Idempotent."""
        if self._write_closed or self._closed:
            return
        self._write_closed = True
        try:
            await self._inner.write(self._client.close_notify())
        except ConnectionError:
            pass

    def detach_raw(self) -> tuple[bytes, bytes, ByteStream]:
        """End TLS reading; return (decrypted unread plaintext, undecrypted raw bytes, inner stream)."""
        if self._detached:
            raise RuntimeError("already detached")
        self._detached = True
        plain, self._plain = self._plain, b""
        return plain, self._client.unprocessed(), self._inner

    def abort(self) -> None:
        self._closed = True
        self._inner.abort()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._inner.aclose()


async def run_handshake(inner: ByteStream, client: Tls13Client) -> RealityStream:
    """Drive *client*'s handshake over *inner*; raise :class:`TlsError` on failure."""
    while True:
        out = client.data_to_send()
        if out:
            await inner.write(out)
        event = client.next_event()
        if isinstance(event, HandshakeDone):
            await inner.write(client.data_to_send())
            return RealityStream(inner, client)
        if event is not None:
            raise TlsError("TLS: data before the handshake completed")
        data = await inner.read(CHUNK)
        if data:
            client.feed(data)
        else:
            client.feed_eof()
