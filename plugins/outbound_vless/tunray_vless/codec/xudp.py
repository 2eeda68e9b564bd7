"""XUDP: UDP packets with per-packet addresses over one Mux.Cool session (``common/xudp``).

A VLESS request with command Mux (to ``v1.mux.cool``) carries one session, id 0.
Client to server, each packet is one frame (:mod:`tunray_vless.codec.mux`)::

    first:  00 00 | 01 New | 01 data | 02 UDP | port | type | addr | [GlobalID(8)] | len | data
    later:  00 00 | 02 Keep | 01 data | [02 UDP | port | type | addr]              | len | data

The first frame names the request's destination; GlobalID follows only when the
packet came with its own address (a real user packet).  Later frames carry the
packet's address when it has one.  Empty packets and packets of more than 7526 bytes
(``len + 666 > 8192``) are dropped silently.

Server to client, the reader takes Keep frames (with the source address when present,
else the session's destination), discards KeepAlive, and treats anything else (New,
End, unknown, metaLen < 4) as the end of the stream.  metaLen > 512 is an error.

GlobalID lets the server keep one UDP socket per client source across reconnects:
Xray takes an 8-byte keyed BLAKE3 hash (32-byte base key) of the inbound source in
its ``udp:10.0.0.2:5353`` form.
"""

from __future__ import annotations

import hashlib
from types import ModuleType

from tunray.net.address import Destination, Network

from tunray_vless.codec.address import decode_address, encode_address
from tunray_vless.codec.errors import CodecError
from tunray_vless.codec.mux import MAX_META_LEN, NET_UDP, OPTION_DATA, Status

_blake3: ModuleType | None
try:
    import blake3 as _blake3
except ImportError:  # pragma: no cover - blake3 is a dependency; the fallback keeps the codec usable
    _blake3 = None

BUF_SIZE = 8192
MAX_PACKET = BUF_SIZE - 666
GLOBAL_ID_SIZE = 8
BASE_KEY_SIZE = 32


def global_id(source: str, base_key: bytes) -> bytes:
    """The 8-byte XUDP GlobalID of an inbound source such as ``"udp:10.0.0.2:5353"``.

    Keyed BLAKE3 with an 8-byte output, like Xray.  Without the ``blake3`` package the
    value is keyed BLAKE2b instead: still stable per (key, source), which is all the
    server needs (it only compares IDs), but not equal to what Xray would send for the
    same base key.
    """
    if len(base_key) != BASE_KEY_SIZE:
        raise ValueError(f"XUDP base key must be {BASE_KEY_SIZE} bytes, not {len(base_key)}")
    data = source.encode()
    if _blake3 is not None:
        return bytes(_blake3.blake3(data, key=base_key).digest(length=GLOBAL_ID_SIZE))
    return hashlib.blake2b(data, key=base_key, digest_size=GLOBAL_ID_SIZE).digest()


class XudpWriter:
    """Client-side XUDP frames for one VLESS Mux request (session id 0)."""

    __slots__ = ("_started", "destination", "global_id")

    def __init__(self, destination: Destination, global_id: bytes = bytes(GLOBAL_ID_SIZE)) -> None:
        if len(global_id) != GLOBAL_ID_SIZE:
            raise ValueError("GlobalID must be 8 bytes")
        self.destination = destination
        self.global_id = global_id
        # Xray opens the session (New) only for a UDP destination; otherwise every
        # frame is Keep and must name its packet's address.
        self._started = destination.network is not Network.UDP

    def write(self, payload: bytes, packet_dest: Destination | None = None) -> bytes:
        """The frame for one packet, or ``b""`` if Xray would drop it.

        *packet_dest* is the packet's own destination (Xray's ``b.UDP``).  The first
        frame always names the session destination and, if *packet_dest* is given,
        appends the GlobalID; later frames name *packet_dest* when given.
        """
        size = len(payload)
        if size == 0 or size > MAX_PACKET:
            return b""
        if not self._started:
            self._started = True
            dest = self.destination
            meta = b"\x00\x00\x01\x01\x02" + encode_address(dest.host, dest.port)
            if packet_dest is not None:
                meta += self.global_id
        elif packet_dest is not None:
            meta = b"\x00\x00\x02\x01\x02" + encode_address(packet_dest.host, packet_dest.port)
        else:
            meta = b"\x00\x00\x02\x01"
        return len(meta).to_bytes(2, "big") + meta + size.to_bytes(2, "big") + payload


class XudpReader:
    """Client-side XUDP reader: feed bytes, get ``(payload, source)`` pairs.

    After the end of the stream (:attr:`eof`) further input is ignored.
    """

    __slots__ = ("_buf", "default_source", "eof")

    def __init__(self, default_source: Destination) -> None:
        self.default_source = Destination(Network.UDP, default_source.host, default_source.port)
        self._buf = bytearray()
        self.eof = False

    def feed(self, data: bytes) -> list[tuple[bytes, Destination]]:
        if self.eof:
            return []
        buf = self._buf
        buf += data
        out: list[tuple[bytes, Destination]] = []
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            meta_len = (buf[pos] << 8) | buf[pos + 1]
            if meta_len > MAX_META_LEN:
                raise CodecError(f"invalid XUDP metaLen {meta_len}")
            if meta_len < 4:
                self._finish()
                return out
            meta_start = pos + 2
            meta_end = meta_start + meta_len
            if meta_end > size:
                break
            status, option = buf[meta_start + 2], buf[meta_start + 3]
            source = self.default_source
            if status == Status.KEEP:
                if meta_len > 4 and buf[meta_start + 4] == NET_UDP:
                    parsed = decode_address(bytes(buf[meta_start + 5 : meta_end]))
                    if parsed is None:
                        raise CodecError("truncated source address in XUDP frame")
                    source = Destination(Network.UDP, parsed[0], parsed[1])
            elif status != Status.KEEPALIVE:
                self._finish()
                return out
            if option & OPTION_DATA:
                if meta_end + 2 > size:
                    break
                data_end = meta_end + 2 + ((buf[meta_end] << 8) | buf[meta_end + 1])
                if data_end > size:
                    break
                if data_end > meta_end + 2 and status == Status.KEEP:
                    out.append((bytes(buf[meta_end + 2 : data_end]), source))
                pos = data_end
            else:
                pos = meta_end
        if pos:
            del buf[:pos]
        return out

    def _finish(self) -> None:
        self.eof = True
        self._buf = bytearray()
