"""The sans-IO contract a TCP/IP stack core implements, and what a stack declares it can do.

A *stack core* turns raw IP packets into TCP connections and UDP flows and back, with
no asyncio, no sockets and no clock of its own.  :mod:`tunray.stackdriver` is the one
asyncio driver that runs any core on a :class:`~tunray.device.PacketDevice`; tests and
benchmarks drive a core directly.  The Python stack implements it in Python, the lwIP
stack over Debian's liblwip.

Theory of operation.

* **Packets.**  :meth:`StackCore.feed` takes one packet as read from the device (with its
  virtio-net header when the core was built for one); :meth:`StackCore.drain` returns,
  and forgets, every packet the core wants written since the last drain.  A driver feeds
  a whole batch of packets and drains once, so ACKs and window updates coalesce.
* **Time.**  Every call that may start a timer takes ``now`` (seconds, any monotonic
  origin).  :meth:`StackCore.next_timer` is the earliest deadline or ``None``; the driver
  calls :meth:`StackCore.handle_timer` at or after it (calling early is harmless).
* **Handles.**  A connection or flow is an ``int`` handle, announced by :class:`TcpOpened`
  or :class:`UdpOpened` and unique for the core's lifetime (TCP and UDP share one
  counter).  Events carry handles and bytes, never live objects.  The driver owns a
  handle until it *releases* it with exactly one :meth:`~StackCore.tcp_close` or
  :meth:`~StackCore.tcp_abort` (:meth:`~StackCore.udp_close` for UDP); after that no
  event names the handle and using it again is a driver bug (``KeyError``).  A handle
  whose connection has ended (:class:`TcpClosed` / :class:`TcpReset`) stays valid until
  released, so bytes received before the end can still be read.
* **Events.**  :meth:`StackCore.take_events` returns, and forgets, the events raised
  since the last call.  Lifecycle events are always raised: per TCP handle one
  :class:`TcpOpened`, at most one :class:`TcpPeerEof`, then exactly one of
  :class:`TcpClosed` or :class:`TcpReset` (while the handle is held).  Readiness events
  are edge-triggered and only follow an operation that reported "would block":
  :class:`TcpReadable` after :meth:`~StackCore.tcp_read` returned ``None``,
  :class:`TcpWritable` after :meth:`~StackCore.tcp_write` / :meth:`~StackCore.tcp_writable`
  returned ``False``, :class:`UdpReadable` after :meth:`~StackCore.udp_recv` returned
  ``None``.  An uninterested driver costs nothing per segment.
* **Backpressure.**  Receive: bytes the driver has not read stay in the core and close the
  TCP window; reading opens it again.  Send: :meth:`~StackCore.tcp_write` always takes the
  bytes and returns ``False`` while the connection's send buffer is above the core's
  high-water mark; the driver then waits for :class:`TcpWritable`.  UDP never blocks:
  full queues drop and count.
* **Handshake.**  A core with ``lazy_handshake`` raises :class:`TcpOpened` with
  ``pending=True`` on the SYN and answers it only on :meth:`~StackCore.tcp_accept`
  (``tcp_abort`` answers RST).  With ``eager`` (or a core that cannot hold a SYN) the
  SYN-ACK has gone out already and ``pending`` is ``False``.
* **Errors.**  Nothing raises on bad input: malformed packets are dropped and counted in
  :attr:`StackCore.counters` by reason.  :meth:`~StackCore.tcp_write` raises
  :class:`SendClosed` when the connection can no longer send.

Ownership: a core never touches the device; the driver reads and writes it and whoever
opened it closes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from tunray.net.address import Network

__all__ = [
    "BOTH",
    "CoreEvent",
    "SendClosed",
    "StackCapabilities",
    "StackCore",
    "TcpClosed",
    "TcpOpened",
    "TcpPeerEof",
    "TcpReadable",
    "TcpReset",
    "TcpWritable",
    "UdpClosed",
    "UdpOpened",
    "UdpReadable",
]

BOTH: frozenset[Network] = frozenset((Network.TCP, Network.UDP))


@dataclass(frozen=True, slots=True)
class StackCapabilities:
    """What a stack can do; config validation and ``check_stack`` go by it.

    ``lazy_handshake``: it can hold an app's SYN until the outbound is connected
    (``"handshake": "lazy"``); without it, ``lazy`` is a config error, never a silent
    downgrade.  ``icmp_echo``: it answers echo requests itself.  ``vnet_hdr``: it reads and
    writes virtio-net headers, so the TUN may be opened with checksum offload and GRO
    super-packets (``"offload": true``); without it the driver asks for a plain TUN.
    ``tso``: it can send TCP super-segments (GSO) when vnet headers are on.  ``flows``:
    the flow kinds it yields.  ``half_open_budget``: it bounds half-open handshakes
    (``maxHalfOpen``/``maxHalfOpenPerSource``, :mod:`tunray.halfopen`).  ``buffer_budget``: it
    bounds the bytes held for all flows together (``maxBufferedBytes``, :mod:`tunray.stackbudget`).
    """

    lazy_handshake: bool = True
    icmp_echo: bool = True
    vnet_hdr: bool = False
    tso: bool = False
    flows: frozenset[Network] = BOTH
    #: It keeps half-open TCP handshakes in a budget of their own (``max_half_open``,
    #: ``max_half_open_per_source``): SYN cookies beyond it, or the oldest handshakes reset.
    half_open_budget: bool = False
    #: It holds the bytes apps send itself and bounds their sum (``max_buffered_bytes``,
    #: :mod:`tunray.stackbudget`); a stack whose TCP is the kernel's cannot.
    buffer_budget: bool = False


class SendClosed(ConnectionError):
    """Raised by :meth:`StackCore.tcp_write`: the connection was reset, closed, or our FIN is queued."""


# --- events ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TcpOpened:
    """A new TCP connection from the app: ``src`` is the app, ``dst`` where it connects to.

    Addresses are packed (4 or 16 bytes).  ``pending`` is true while the SYN waits for
    :meth:`StackCore.tcp_accept` (lazy handshake).
    """

    handle: int
    src_ip: bytes
    src_port: int
    dst_ip: bytes
    dst_port: int
    pending: bool


@dataclass(frozen=True, slots=True)
class TcpReadable:
    """Bytes or the peer's FIN wait for a driver whose ``tcp_read`` returned ``None``."""

    handle: int


@dataclass(frozen=True, slots=True)
class TcpPeerEof:
    """The app half-closed (its FIN arrived in order); ``tcp_read`` returns ``b""`` after the data."""

    handle: int


@dataclass(frozen=True, slots=True)
class TcpWritable:
    """The send buffer fell below the high-water mark after ``tcp_write``/``tcp_writable`` said ``False``."""

    handle: int


@dataclass(frozen=True, slots=True)
class TcpClosed:
    """The connection ended in order (both FINs exchanged, or a FIN-wait timeout)."""

    handle: int


@dataclass(frozen=True, slots=True)
class TcpReset:
    """The connection ended abnormally: RST from the app, retransmission or idle timeout, reset_all."""

    handle: int


@dataclass(frozen=True, slots=True)
class UdpOpened:
    """A datagram from a new app endpoint ``src``; ``dst`` is where that first datagram went."""

    handle: int
    src_ip: bytes
    src_port: int
    dst_ip: bytes
    dst_port: int


@dataclass(frozen=True, slots=True)
class UdpReadable:
    """Datagrams wait for a driver whose ``udp_recv`` returned ``None``."""

    handle: int


@dataclass(frozen=True, slots=True)
class UdpClosed:
    """The flow ended (idle timeout or reset_all); ``udp_recv`` returns what is still queued, then ``None``."""

    handle: int


CoreEvent = (
    TcpOpened | TcpReadable | TcpPeerEof | TcpWritable | TcpClosed | TcpReset | UdpOpened | UdpReadable | UdpClosed
)


# --- the protocol ---------------------------------------------------------------------------------


class StackCore(Protocol):
    """A sans-IO TCP/IP core; see the module docstring for the rules every method follows."""

    counters: dict[str, int]
    """Drops and other events by reason; the driver may replace the dict with its own before use."""

    # packets and time

    def feed(self, packet: bytes, now: float) -> None:
        """Process one packet as read from the device.  Never raises; bad packets are counted."""

    def drain(self, now: float) -> list[bytes]:
        """Return (and forget) every packet to write, in order; flushes what operations caused."""

    def take_events(self) -> Sequence[CoreEvent]:
        """Return (and forget) the events raised since the last call, in order."""

    def next_timer(self) -> float | None:
        """The earliest deadline, or ``None`` when no timer is armed."""

    def handle_timer(self, now: float) -> None:
        """Run every timer due at *now*."""

    def reset_all(self, now: float) -> None:
        """Reset every TCP connection (RSTs go out with the next drain) and close every UDP flow.

        Held handles get their :class:`TcpReset` / :class:`UdpClosed` and stay valid until released.
        """

    def stats(self) -> dict[str, int]:
        """Gauges for logs: at least ``tcp_open`` and ``udp_open``."""

    # TCP, by handle

    def tcp_accept(self, handle: int, now: float) -> None:
        """Answer a pending SYN (lazy handshake).  No-op when already accepted or ended."""

    def tcp_read(self, handle: int, max_bytes: int, now: float) -> bytes | None:
        """Up to *max_bytes* received bytes; ``b""`` after the peer's FIN or the end; ``None``: wait for
        :class:`TcpReadable`.  Buffered bytes are returned even after the connection ended."""

    def tcp_write(self, handle: int, data: bytes | bytearray | memoryview, now: float) -> bool:
        """Queue *data* (all of it); ``False`` while above the high-water mark: wait for :class:`TcpWritable`.

        Raises :class:`SendClosed` if the connection cannot send any more.
        """

    def tcp_writable(self, handle: int) -> bool:
        """True if the send buffer is below the high-water mark or the connection ended.

        ``False`` arms :class:`TcpWritable`.
        """

    def tcp_shutdown(self, handle: int, now: float) -> None:
        """Half-close: FIN after the queued bytes.  Idempotent; the handle stays held."""

    def tcp_close(self, handle: int, now: float) -> None:
        """Graceful close and release: FIN after the queued bytes, later incoming data is discarded."""

    def tcp_abort(self, handle: int, now: float) -> None:
        """Reset (RST, or refuse a pending SYN) and release.  Quiet if the connection already ended."""

    # UDP, by handle

    def udp_recv(self, handle: int) -> tuple[bytes, bytes, int] | None:
        """The next datagram from the app as ``(payload, dst_ip, dst_port)``; ``None``: none queued
        (arms :class:`UdpReadable` while the flow lives)."""

    def udp_send(self, handle: int, data: bytes, src_ip: bytes, src_port: int, now: float) -> bool:
        """Send *data* to the flow's app as if from ``src_ip:src_port``; ``False`` (counted) if it cannot."""

    def udp_close(self, handle: int, now: float) -> None:
        """Close the flow and release the handle."""
