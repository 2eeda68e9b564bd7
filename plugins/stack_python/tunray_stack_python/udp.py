"""UDP flows, full-cone as Xray's TUN: one flow per app source endpoint.

Every datagram from the app is queued with its own destination; replies name their
own source, which becomes the source address of the synthesised packet.  The queue
is bounded (``udp_queue_packets``) and drops when full, as a network would.

UDP header (RFC 768): source port, destination port, length, checksum (16 bits each).
"""

from __future__ import annotations

import struct
from collections import deque

from tunray_stack_python.checksum import finish, partial, pseudo_sum, sum_of
from tunray_stack_python.ip import PROTO_UDP, VNET_F_NEEDS_CSUM, ip_header, vnet_header

UDP_HEADER = struct.Struct("!HHHH")


class UdpFlow:
    """One app source endpoint ``(ip, port)``; ``queue`` holds ``(payload, dst_ip, dst_port)``."""

    __slots__ = ("first_dst", "key", "last_active", "queue", "scheduled", "user", "version", "want_read")

    def __init__(self, key: tuple[bytes, int], version: int, first_dst: tuple[bytes, int], now: float) -> None:
        self.key = key
        self.version = version
        self.first_dst = first_dst
        self.queue: deque[tuple[bytes, bytes, int]] = deque()
        self.last_active = now
        self.scheduled = float("inf")
        self.want_read = False
        self.user: object = None

    @property
    def source(self) -> tuple[bytes, int]:
        return self.key


def build_udp(version: int, src: bytes, sport: int, dst: bytes, dport: int, payload: bytes,
              vnet: bool) -> bytes:
    """A complete UDP packet (with a virtio header when *vnet*)."""
    length = 8 + len(payload)
    pseudo = pseudo_sum(src, dst, PROTO_UDP, length)
    if vnet:
        head = UDP_HEADER.pack(sport, dport, length, partial(pseudo))
        iplen = 20 if version == 4 else 40
        prefix = vnet_header(VNET_F_NEEDS_CSUM, 0, 0, 0, iplen, 6)
    else:
        head = UDP_HEADER.pack(sport, dport, length, 0)
        head = UDP_HEADER.pack(sport, dport, length, finish(pseudo + sum_of(head) + sum_of(payload)))
        prefix = b""
    return b"".join((prefix, ip_header(version, src, dst, PROTO_UDP, length), head, payload))
