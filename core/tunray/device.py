"""Packet devices: where a stack reads and writes raw IP packets.

A TUN device is the real one; tests use a ``SOCK_SEQPACKET`` socketpair, which keeps
packet boundaries just as a TUN file descriptor does.  The contract is deliberately
close to the file descriptor so a stack can drive it from ``loop.add_reader`` without
an extra task or queue per packet.
"""

from __future__ import annotations

import errno
import os
import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass

VNET_HDR_LEN = 10  # sizeof(struct virtio_net_hdr), as TUN prepends it with IFF_VNET_HDR


@dataclass(frozen=True, slots=True)
class Offloads:
    """What the device negotiated with the kernel (see ``TUNSETOFFLOAD``).

    With ``vnet_hdr`` every packet read or written starts with a 10-byte
    ``virtio_net_hdr``; with ``tso`` the kernel may hand over TCP super-packets of up
    to 64 KiB (to be cut by the stack) and accepts them back; with ``csum`` checksums
    of packets read may be left partial (``VIRTIO_NET_HDR_F_NEEDS_CSUM``).
    """

    vnet_hdr: bool = False
    csum: bool = False
    tso: bool = False


class PacketDevice(ABC):
    """A source and sink of IP packets.  Not thread-safe; used from the event loop."""

    mtu: int = 1500
    offloads: Offloads = Offloads()

    @abstractmethod
    def fileno(self) -> int:
        """A non-blocking fd that becomes readable when a packet is waiting."""

    @abstractmethod
    def read(self, size: int = 65536 + VNET_HDR_LEN) -> bytes | None:
        """One packet, or ``None`` when none is waiting.  Never blocks."""

    @abstractmethod
    def write(self, packet: bytes | bytearray | memoryview) -> bool:
        """Send one packet; ``False`` if the device could not take it now (it is dropped)."""

    @abstractmethod
    def close(self) -> None:
        """Release the device.  Idempotent."""


class DeviceError(OSError):
    """The device failed for good (it was deleted, its fd went bad): not "would block"."""


#: Write errors that lose one packet, as a congested wire would, and leave the device usable.
_TRANSIENT = frozenset({errno.ENOBUFS, errno.ENOMEM, errno.EAGAIN, errno.EMSGSIZE, errno.EINVAL, errno.EIO})


class FdDevice(PacketDevice):
    """A device over any packet-preserving fd (TUN, ``SOCK_SEQPACKET``, ``SOCK_DGRAM``)."""

    def __init__(self, fd: int, mtu: int = 1500, offloads: Offloads = Offloads(), owns_fd: bool = True) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self.mtu = mtu
        self.offloads = offloads
        self._owns = owns_fd
        self.write_drops = 0
        self.name = f"fd {fd}"

    def fileno(self) -> int:
        return self._fd

    def read(self, size: int = 65536 + VNET_HDR_LEN) -> bytes | None:
        """One packet, or None when none is waiting; :class:`DeviceError` if the device failed."""
        try:
            data = os.read(self._fd, size)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            raise DeviceError(exc.errno, f"reading {self.name}: {exc.strerror}") from None
        if not data:  # end of file: a socketpair's peer went away (a TUN never reads empty)
            raise DeviceError(errno.ENODEV, f"reading {self.name}: end of file")
        return data

    def write(self, packet: bytes | bytearray | memoryview) -> bool:
        """False if the packet was dropped (full queue: lost as on a wire, TCP retransmits it);
        :class:`DeviceError` if the device failed (it vanished, the fd went bad)."""
        try:
            os.write(self._fd, packet)
            return True
        except OSError as exc:
            if isinstance(exc, (BlockingIOError, InterruptedError)) or exc.errno in _TRANSIENT:
                self.write_drops += 1
                return False
            raise DeviceError(exc.errno, f"writing {self.name}: {exc.strerror}") from None

    def close(self) -> None:
        if self._fd >= 0:
            if self._owns:
                os.close(self._fd)
            self._fd = -1


def device_pair(mtu: int = 1500) -> tuple[FdDevice, FdDevice]:
    """Two connected in-memory devices: what one writes the other reads, packet by packet."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    return FdDevice(a.detach(), mtu), FdDevice(b.detach(), mtu)
