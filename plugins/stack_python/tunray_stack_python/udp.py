"""UDP flows, full-cone as Xray's TUN: one flow per app source endpoint.

Every datagram from the app is queued with its own destination; replies name their
own source, which becomes the source address of the synthesised packet
(:func:`tunray.net.packet.build_udp`).  The queue is bounded (``udp_queue_packets``)
and drops when full, as a network would.
"""

from __future__ import annotations

from collections import deque


class UdpFlow:
    """One app source endpoint ``(ip, port)``; ``queue`` holds ``(payload, dst_ip, dst_port)``.

    ``held``: the driver still holds ``handle`` (it has not called ``udp_close``).
    """

    __slots__ = ("first_dst", "handle", "held", "key", "last_active", "queue", "scheduled", "version",
                 "want_read")

    def __init__(self, key: tuple[bytes, int], version: int, first_dst: tuple[bytes, int], now: float,
                 handle: int) -> None:
        self.key = key
        self.version = version
        self.first_dst = first_dst
        self.handle = handle
        self.held = True
        self.queue: deque[tuple[bytes, bytes, int]] = deque()
        self.last_active = now
        self.scheduled = float("inf")
        self.want_read = False

    @property
    def source(self) -> tuple[bytes, int]:
        return self.key
