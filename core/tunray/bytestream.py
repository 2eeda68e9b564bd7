"""The byte-stream contract every stream in tunray implements.

A :class:`ByteStream` is one reliable, ordered, full-duplex byte stream: a connected
kernel socket (:mod:`tunray.net.stream`), a security layer over another stream
(``security:tls``), a transport's tunnel (WebSocket, HTTPUpgrade, gRPC), the app's
side of a flow (:class:`tunray.link.ByteLink`).  :func:`tunray.relay.relay` copies
between two of them and must tell a *clean end* from a *reset*, so the contract is
exact about both:

``read(max_bytes)``
    Returns between 1 and *max_bytes* bytes.  Returns ``b""`` once the peer
    half-closed (EOF, a FIN) and every byte sent before it has been returned; every
    later ``read`` returns ``b""`` too.  Raises :class:`StreamReset` when the peer
    reset the stream (RST, an HTTP/2 RST_STREAM with an error code, a broken
    connection under a framing layer); bytes received *before* the reset are returned
    first.  After this side's own :meth:`~ByteStream.aclose` or
    :meth:`~ByteStream.abort` it returns ``b""``; a ``read`` waiting at that moment
    wakes and returns ``b""`` too.

``write(data)``
    Queues *data* and returns once the stream's send buffer is below its high-water
    mark (backpressure: a slow peer slows the writer).  Raises :class:`StreamReset`
    when the peer reset the stream, :class:`StreamClosed` after this side's own
    ``write_eof``/``aclose``/``abort``.  A write that returned was accepted, not
    necessarily delivered.

``write_eof()``
    Half-closes the sending direction (a FIN, END_STREAM, ``close_notify``); the peer's
    ``read`` then returns ``b""`` after the bytes already written.  Reading goes on.
    Idempotent; a no-op once the stream is closed or reset.  A transport that cannot
    half-close (WebSocket) says so in :attr:`~ByteStream.half_close`.

``abort()``
    Resets the stream (RST to the peer, whose ``read``/``write`` then raise
    :class:`StreamReset`) and releases it at once.  Idempotent, synchronous, never
    raises.

``aclose()``
    Closes gracefully (flush, FIN/close frame, release).  Idempotent; always releases
    the resource, even when the flush fails.

A stream built on another stream (a :class:`tunray.transport.Layer`'s result) owns the
inner one: ``aclose``/``abort`` close it too, and a reset of the inner stream is a reset
of the outer one (never silently an EOF).

:class:`RecordStream` adds what XTLS Vision needs from a record-oriented security
layer (TLS, REALITY): the negotiated version and ALPN, reading one record at a time,
and leaving the record layer at an exact boundary (``detach_raw``).

:func:`tunray.testing.bytestream.check_byte_stream` is the conformance suite.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunray.net.stream import SocketStream

__all__ = ["ByteStream", "RecordStream", "StreamClosed", "StreamReset"]


class StreamReset(ConnectionResetError):
    """The peer reset the stream; data it sent after the last byte returned is lost."""


class StreamClosed(ConnectionError):
    """The stream was already closed (or half-closed for writing) by this side."""


class ByteStream(ABC):
    """See the module docstring for the semantics every implementation follows."""

    __slots__ = ()

    #: ``False`` when ``write_eof`` cannot reach the peer (WebSocket: the flow then ends
    #: when both directions stop, by the relay's timers).
    half_close: bool = True

    @abstractmethod
    async def read(self, max_bytes: int = 65536) -> bytes:
        """Up to *max_bytes* bytes; ``b""`` at EOF; :class:`StreamReset` if the peer reset."""

    @abstractmethod
    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue *data*; wait while above the high-water mark; :class:`StreamReset`/:class:`StreamClosed`."""

    @abstractmethod
    async def write_eof(self) -> None:
        """Half-close the sending direction.  Idempotent."""

    @abstractmethod
    def abort(self) -> None:
        """Reset the stream and release it.  Idempotent, never raises."""

    @abstractmethod
    async def aclose(self) -> None:
        """Close gracefully and release.  Idempotent."""

    def fileno(self) -> int | None:
        """The kernel socket this stream *is* (no framing or encryption above it), else ``None``."""
        return None

    def take_for_splice(self) -> bytes | None:
        """Hand reading over to the relay, if this stream is a bare kernel socket (:meth:`fileno`).

        Returns ``None`` (nothing changes) unless the stream is open both ways with no
        write pending; otherwise the stream stops reading on its own and returns the
        bytes it had received but not yet returned (often ``b""``), which the caller
        now owns.  :func:`tunray.relay.relay` then moves bytes on the descriptor with
        ``splice(2)``; the stream is closed as usual afterwards.  A later ``read``
        resumes reading (the relay falls back to copying when the other end cannot
        splice).
        """
        return None

    def socket_stream(self) -> SocketStream | None:
        """The :class:`~tunray.net.stream.SocketStream` this stream is, with nothing above it.

        Only a stream whose ``read``/``write``/``write_eof`` are exactly the socket's (no
        bytes held back, no framing, errors meaning the same) returns it: the relay then
        copies with ``recv``/``send`` from loop callbacks (:mod:`tunray.sockcopy`) and
        closes the stream as usual afterwards.  Default: ``None``.
        """
        return None

    async def drain_for_splice(self) -> None:
        """Wait until every byte written has left the stream's own buffer for the kernel.

        The relay calls it on a stream with a :meth:`fileno` before
        :meth:`take_for_splice`, so bytes it then writes on the descriptor directly come
        after every byte written through the stream.  Cancelling the wait is safe.  A
        stream without a descriptor of its own has nothing to drain.
        """

class RecordStream(ByteStream):
    """A record-oriented security layer (TLS, REALITY) as XTLS Vision uses it."""

    __slots__ = ()

    @property
    @abstractmethod
    def tls_version(self) -> str:
        """The negotiated protocol version, e.g. ``"TLSv1.3"``."""

    @property
    @abstractmethod
    def alpn(self) -> str | None:
        """The negotiated ALPN protocol, or ``None``."""

    @property
    @abstractmethod
    def inner(self) -> ByteStream:
        """The stream under the record layer."""

    @abstractmethod
    async def read_record(self, max_bytes: int = 65536) -> bytes:
        """Plaintext from at most one record; ``b""`` at EOF; :class:`StreamReset` as :meth:`read`."""

    @abstractmethod
    def detach_raw(self) -> tuple[bytes, bytes, ByteStream]:
        """End reading through the record layer at a record boundary.

        Returns (plaintext decrypted but not yet read, raw bytes received but not yet
        decrypted, the inner stream positioned right after them).  Writing through the
        record layer stays possible.  Raises ``RuntimeError`` when called twice.
        """
