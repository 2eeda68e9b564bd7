"""The stack contract: raw IP packets in, TCP and UDP flows out.

A :class:`Stack` is attached to one :class:`~tunray.device.PacketDevice`.  It reads
packets, terminates TCP and UDP, and hands each new flow to the inbound as a
:class:`Flow` through :meth:`Stack.accept` (or ``async for flow in stack``).  The
inbound awaits the dispatcher per flow; the stack never sees routing.

Three kinds of stack are planned and the contract is shaped for all of them:

* ``python``: a sans-IO TCP/IP core (:class:`~tunray.stackcore.StackCore`) run by the
  core's asyncio driver (:class:`~tunray.stackdriver.StackDriver`).
* ``lwip``: Debian's lwIP through cffi behind the same sans-IO protocol and driver;
  its C callbacks run on the event loop thread.
* ``system``: TCP NATed into the kernel; a flow's :class:`~tunray.link.ByteLink`
  is then a real socket and reports it through ``fileno()`` so relays can splice.

Handshake.  With ``handshake="lazy"`` a TCP flow is yielded on the SYN and the
SYN-ACK waits for ``link.accept()``; ``link.abort()`` answers RST.  With ``"eager"``
the SYN is answered at once (Xray's behaviour) and ``accept`` is a no-op.  A stack
that cannot hold a SYN declares it in :attr:`Stack.capabilities` and is never built
with ``"lazy"``.

Errors.  Malformed packets are dropped and counted in :attr:`Stack.counters`; they
never raise out of the stack.  ``accept`` raises :class:`StackClosed` after ``aclose``.
"""

from __future__ import annotations

import ipaddress
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tunray.config.schema import EMPTY, Schema, Settings
from tunray.device import PacketDevice
from tunray.link import ByteLink, PacketLink
from tunray.net.address import Destination, Network
from tunray.stackcore import StackCapabilities


class StackClosed(Exception):
    """The stack was closed; no more flows will come."""


@dataclass(frozen=True, slots=True)
class Flow:
    network: Network
    source: Destination
    destination: Destination
    link: ByteLink | PacketLink


@dataclass(slots=True)
class StackOptions:
    """What the inbound tells every stack; resource limits are named settings (see docs)."""

    mtu: int = 1500
    handshake: str = "lazy"  # or "eager"
    tcp_idle_timeout: float = 300.0
    udp_idle_timeout: float = 60.0
    handshake_timeout: float = 4.0
    max_flows: int = 65536
    #: SYNs whose handshake is not complete, at most (beyond: SYN cookies); and per source address.
    max_half_open: int = 256
    max_half_open_per_source: int = 64
    udp_queue_packets: int = 1024
    tcp_buffer: int = 4 << 20
    #: Bytes from apps a stack holds for all its TCP flows together (``tunray.stackbudget``); in a
    #: worker, its share of the inbound's ``maxBufferedBytes``.
    max_buffered_bytes: int = 64 << 20
    settings: Settings = field(default_factory=lambda: EMPTY.parse({}, ""))
    stacks: Mapping[str, type[Stack]] = field(default_factory=dict)
    """The registry's stacks (name -> class), for a stack built on another (``mixed``); may be empty."""
    queue: tuple[int, int] | None = None
    """In a worker process: (this worker's TUN queue, number of queues), steered by
    :func:`tunray.net.steering.queue_for`; ``None`` in a single process."""


class Stack(ABC):
    """A TCP/IP stack plugin.  Subclasses set ``name`` and optionally ``settings_schema``.

    ``capabilities`` says what the stack can do (:class:`~tunray.stackcore.StackCapabilities`);
    the TUN inbound's config validation and ``check_stack`` go by it, so a stack that cannot
    hold a SYN must declare ``lazy_handshake=False`` and ``"handshake": "lazy"`` is then refused.
    Most stacks subclass :class:`tunray.stackdriver.StackDriver` and only write a sans-IO core.
    """

    name: ClassVar[str]
    settings_schema: ClassVar[Schema] = EMPTY
    capabilities: ClassVar[StackCapabilities] = StackCapabilities()
    default_mtu: ClassVar[int | None] = None
    """The TUN MTU this stack wants when the user sets none (``None``: the inbound's default)."""

    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.counters: dict[str, int] = {}
        #: Set when the device failed for good (it was deleted, its fd went bad); the stack
        #: then closed itself and ``accept`` raises :class:`StackClosed`.  None otherwise.
        self.failure: OSError | None = None

    @classmethod
    def check_link(cls, gateway: Sequence[ipaddress.IPv4Interface | ipaddress.IPv6Interface], path: str) -> None:
        """Refuse, with a :class:`~tunray.config.errors.ConfigError` naming *path*, TUN addresses the
        stack cannot work with.  Called at config validation; the default accepts any."""

    def count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    @abstractmethod
    async def attach(self, device: PacketDevice) -> None:
        """Start reading *device*.  Called once."""

    @abstractmethod
    async def accept(self) -> Flow:
        """Wait for the next flow.  Raises :class:`StackClosed` once closed."""

    @abstractmethod
    async def aclose(self) -> None:
        """Stop reading the device, reset every open flow, wake every waiter.  Idempotent.

        The device is not closed: whoever opened it (the inbound) closes it.
        """

    def stop_accepting(self) -> None:
        """Shutdown has begun: refuse new flows (a SYN gets a RST) and drop the ones not yet
        accepted; flows already handed out keep working.  Default: nothing."""

    async def __aiter__(self) -> AsyncIterator[Flow]:
        while True:
            try:
                yield await self.accept()
            except StackClosed:
                return

    def stats(self) -> dict[str, Any]:
        """Counters for logs and tests: drops by reason, flows open, bytes."""
        return dict(self.counters)
