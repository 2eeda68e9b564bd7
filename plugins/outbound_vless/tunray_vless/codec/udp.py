"""Plain VLESS UDP framing (command 02 without XUDP), both directions::

    length(2, big-endian) | payload(length)

The writer drops empty packets and packets with ``length + 2 > 8192`` silently, as
Xray's ``MultiLengthPacketWriter`` does.  The reader accepts any length up to 65535
and skips zero-length packets.  Every packet goes to the request's one destination.
"""

from __future__ import annotations

from collections.abc import Iterable

BUF_SIZE = 8192
MAX_PAYLOAD = BUF_SIZE - 2


def encode_packet(payload: bytes) -> bytes:
    """One framed packet, or ``b""`` when Xray would drop it (empty or over-size)."""
    size = len(payload)
    if size == 0 or size > MAX_PAYLOAD:
        return b""
    return size.to_bytes(2, "big") + payload


def encode_packets(payloads: Iterable[bytes]) -> bytes:
    """Frame several packets into one write (dropped ones leave no trace)."""
    return b"".join([encode_packet(p) for p in payloads])


class PacketDecoder:
    """Feed stream bytes, get whole packets back; partial packets wait for more."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a packet."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        packets: list[bytes] = []
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            end = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
            if end > size:
                break
            if end > pos + 2:
                packets.append(bytes(buf[pos + 2 : end]))
            pos = end
        if pos:
            del buf[:pos]
        return packets
