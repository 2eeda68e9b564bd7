"""Events the core reports to its driver (the asyncio adapter, a test, a benchmark).

Data events are edge-triggered and only raised when the driver asked for them by
setting the connection's or flow's ``want_read`` / ``want_write`` interest flag;
that keeps the per-segment cost of an uninterested driver at zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunray_stack_python.tcp import TcpConn
    from tunray_stack_python.udp import UdpFlow


@dataclass(frozen=True, slots=True)
class TcpConnectionRequested:
    """A SYN opened a new connection (pending when lazy, SYN-ACK already sent when eager)."""

    conn: TcpConn


@dataclass(frozen=True, slots=True)
class TcpReadable:
    """Data, a FIN, or a reset is waiting for a reader that set ``want_read``."""

    conn: TcpConn


@dataclass(frozen=True, slots=True)
class TcpWritable:
    """The send buffer fell below its high-water mark (or the connection ended)."""

    conn: TcpConn


@dataclass(frozen=True, slots=True)
class TcpClosed:
    """The connection left the table; ``reset`` if it ended by RST or a timeout."""

    conn: TcpConn
    reset: bool


@dataclass(frozen=True, slots=True)
class UdpFlowOpened:
    flow: UdpFlow


@dataclass(frozen=True, slots=True)
class UdpReadable:
    flow: UdpFlow


@dataclass(frozen=True, slots=True)
class UdpFlowClosed:
    flow: UdpFlow


Event = TcpConnectionRequested | TcpReadable | TcpWritable | TcpClosed | UdpFlowOpened | UdpReadable | UdpFlowClosed
