"""Links: the app's side of a flow, as an outbound sees it.

Xray hands an outbound a ``transport.Link`` (a reader and a writer).  tunray has two
kinds, because TCP and UDP differ in what they promise:

* :class:`ByteLink` is a byte stream with backpressure in both directions.  ``read``
  returns what the app sent (``b""`` once the app half-closed); ``write`` returns once
  the data is buffered below the link's high-water mark, so a slow app slows the
  outbound down.  A stack implements the buffering with its TCP windows.
* :class:`PacketLink` carries datagrams that each name their own peer, so one UDP
  flow (one source endpoint of the app) can reach many destinations and hear back
  from any of them: full-cone NAT as Xray's TUN does it.  ``send`` never blocks; a
  full queue drops, as a network would.

Lazy handshakes.  A stack may defer answering the app's SYN until the outbound has
really connected (``handshake: "lazy"``).  The outbound calls :meth:`ByteLink.accept`
once its upstream is up; the dispatcher calls :meth:`ByteLink.abort` when routing or
the dial fails, so the app sees a reset instead of a connection that dies later.
Both are idempotent, and an eager stack implements ``accept`` as a no-op.

Closing.  ``aclose`` is idempotent and always releases the flow; ``abort`` resets it.
After either, ``read`` returns ``b""`` and ``write`` raises :class:`LinkClosed`.

A :class:`ByteLink` is a :class:`~tunray.bytestream.ByteStream` and follows its
contract: the app's FIN is ``b""`` from ``read``, the app's RST raises
:class:`~tunray.bytestream.StreamReset` (:class:`LinkClosed` is one) from ``read`` and
``write``; ``abort`` sends the app a RST, ``write_eof`` a FIN.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tunray.bytestream import ByteStream, StreamClosed, StreamReset
from tunray.net.address import Destination

if TYPE_CHECKING:
    from tunray.net.stream import SocketStream


class LinkClosed(StreamReset, StreamClosed):
    """Raised by ``read``/``write``/``send`` when the app side is gone (reset, or closed here)."""


class ByteLink(ByteStream):
    """One TCP flow, app side."""

    __slots__ = ()

    @abstractmethod
    async def read(self, max_bytes: int = 65536) -> bytes:
        """Return up to *max_bytes* the app sent; ``b""`` when the app half-closed or the link closed.

        Raises :class:`~tunray.bytestream.StreamReset` (e.g. :class:`LinkClosed`) when the app reset.
        """

    @abstractmethod
    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue *data* for the app; wait while the queue is above its high-water mark.

        Raises :class:`LinkClosed` if the app side is closed or reset.
        """

    @abstractmethod
    async def write_eof(self) -> None:
        """Half-close towards the app (a FIN).  Idempotent."""

    @abstractmethod
    async def accept(self) -> None:
        """Complete the app-side handshake if it was deferred.  Idempotent; no-op when eager."""

    @abstractmethod
    def abort(self) -> None:
        """Reset the flow (RST to the app) and release it.  Idempotent."""

    @abstractmethod
    async def aclose(self) -> None:
        """Close gracefully: flush what was written, FIN, release.  Idempotent."""

    def fileno(self) -> int | None:
        """The kernel socket behind this link, if there is one (a ``system`` stack); else ``None``.

        A relay may then splice socket to socket instead of copying through Python.
        """
        return None

    @property
    def accepted(self) -> bool:
        """True once the app-side handshake is complete."""
        return True

    def on_withdrawn(self, callback: Callable[[], None]) -> None:
        """Call *callback* once if the app withdraws before :meth:`accept` (its SYN was reset or
        evicted): the dispatcher then stops the flow's dial.  Default: never (eager links)."""


@dataclass(slots=True, frozen=True)
class Packet:
    """A datagram and its peer: the destination going out, the source coming back."""

    data: bytes
    peer: Destination


class PacketLink(ABC):
    """One UDP flow (one app source endpoint), app side."""

    __slots__ = ()

    @abstractmethod
    async def recv(self) -> Packet | None:
        """Next datagram from the app with its destination; ``None`` once the link is closed."""

    @abstractmethod
    def send(self, data: bytes, source: Destination) -> None:
        """Deliver *data* to the app as if it came from *source*.  Never blocks; drops when full."""

    @abstractmethod
    def abort(self) -> None:
        """Release the flow at once.  Idempotent."""

    @abstractmethod
    async def aclose(self) -> None:
        """Release the flow.  Idempotent."""


Link = ByteLink | PacketLink


class PrefixedByteLink(ByteLink):
    """A :class:`ByteLink` that first replays bytes already read from it (after sniffing)."""

    __slots__ = ("_inner", "_prefix")

    def __init__(self, inner: ByteLink, prefix: bytes) -> None:
        self._inner = inner
        self._prefix = prefix

    @property
    def inner(self) -> ByteLink:
        return self._inner

    async def read(self, max_bytes: int = 65536) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix[:max_bytes], self._prefix[max_bytes:]
            return data
        return await self._inner.read(max_bytes)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.write(data)

    async def write_eof(self) -> None:
        await self._inner.write_eof()

    async def accept(self) -> None:
        await self._inner.accept()

    def abort(self) -> None:
        self._inner.abort()

    async def aclose(self) -> None:
        await self._inner.aclose()

    def fileno(self) -> int | None:
        return None if self._prefix else self._inner.fileno()

    def take_for_splice(self) -> bytes | None:
        return None if self._prefix else self._inner.take_for_splice()

    def socket_stream(self) -> SocketStream | None:
        return None if self._prefix else self._inner.socket_stream()

    async def drain_for_splice(self) -> None:
        await self._inner.drain_for_splice()

    @property
    def accepted(self) -> bool:
        return self._inner.accepted
