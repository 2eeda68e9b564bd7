"""Mux.Cool frames (``common/mux/frame.go``), the carrier of XUDP.

Frame layout::

    metaLen(2) | meta(metaLen) | [dataLen(2) | data]      data only if option & 0x01

    meta = sessionID(2) | status(1) | option(1) | extra
      status: 01 New, 02 Keep, 03 End, 04 KeepAlive
      option: 0x01 data follows, 0x02 error
      extra for New:   network(1: 01 TCP, 02 UDP) | port(2) | type(1) | address
                       [| GlobalID(8), XUDP only]
      extra for Keep:  [02 | port | type | address]  per-packet UDP address, optional

``metaLen`` above 512 or below 4 is an error.  :class:`SessionWriter` writes one
session the way Xray's ``mux.Writer`` does: the first write is New (option 0 when it
carries no data), later ones Keep, ``close()`` an End frame with option 0.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from tunray.net.address import Destination, Network

from tunray_vless.codec.address import decode_address, encode_address
from tunray_vless.codec.errors import CodecError

MAX_META_LEN = 512
STREAM_CHUNK = 8 * 1024

OPTION_DATA = 0x01
OPTION_ERROR = 0x02

NET_TCP = 1
NET_UDP = 2


class Status(enum.IntEnum):
    NEW = 1
    KEEP = 2
    END = 3
    KEEPALIVE = 4


@dataclass(frozen=True, slots=True)
class FrameMeta:
    session_id: int
    status: int
    option: int = 0
    target: Destination | None = None
    global_id: bytes | None = None


@dataclass(frozen=True, slots=True)
class Frame:
    meta: FrameMeta
    data: bytes | None  # None when the option carries no data


def _net_byte(dest: Destination) -> int:
    return NET_UDP if dest.network is Network.UDP else NET_TCP


def encode_meta(meta: FrameMeta) -> bytes:
    """``metaLen | meta`` for *meta*; New needs a target, Keep may carry a UDP one."""
    out = bytearray(meta.session_id.to_bytes(2, "big"))
    out.append(meta.status)
    out.append(meta.option)
    if meta.status == Status.NEW:
        if meta.target is None:
            raise CodecError("a New frame needs a target")
        out.append(_net_byte(meta.target))
        out += encode_address(meta.target.host, meta.target.port)
        if meta.global_id is not None:
            out += meta.global_id
    elif meta.target is not None:
        out.append(NET_UDP)
        out += encode_address(meta.target.host, meta.target.port)
    if len(out) > MAX_META_LEN:
        raise CodecError(f"frame metadata of {len(out)} bytes exceeds {MAX_META_LEN}")
    return len(out).to_bytes(2, "big") + out


def encode_frame(meta: FrameMeta, data: bytes = b"") -> bytes:
    """A whole frame; *data* is written (with its length) iff ``meta.option`` has the data bit."""
    head = encode_meta(meta)
    if not meta.option & OPTION_DATA:
        return head
    if len(data) > 0xFFFF:
        raise CodecError(f"frame data of {len(data)} bytes exceeds 65535")
    return head + len(data).to_bytes(2, "big") + data


def decode_meta(meta: bytes) -> FrameMeta:
    """Parse the ``meta`` part (without ``metaLen``); raises :class:`CodecError`."""
    size = len(meta)
    if size < 4:
        raise CodecError(f"frame metadata of {size} bytes is too short")
    session_id = (meta[0] << 8) | meta[1]
    status, option = meta[2], meta[3]
    target: Destination | None = None
    global_id: bytes | None = None
    if status == Status.NEW or (status == Status.KEEP and size > 4 and meta[4] == NET_UDP):
        if size < 8:
            raise CodecError(f"frame metadata of {size} bytes is too short for an address")
        network = meta[4]
        parsed = decode_address(meta, 5)
        if parsed is None:
            raise CodecError("truncated address in frame metadata")
        host, port, end = parsed
        if network == NET_TCP:
            target = Destination(Network.TCP, host, port)
        elif network == NET_UDP:
            target = Destination(Network.UDP, host, port)
        else:
            raise CodecError(f"unknown network type {network} in frame metadata")
        if status == Status.NEW and option & OPTION_DATA and network == NET_UDP and size - end >= 8:
            global_id = bytes(meta[end : end + 8])
    return FrameMeta(session_id, status, option, target, global_id)


class FrameDecoder:
    """Feed stream bytes, get whole :class:`Frame` objects back."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            meta_len = (buf[pos] << 8) | buf[pos + 1]
            if meta_len > MAX_META_LEN:
                raise CodecError(f"invalid frame metaLen {meta_len}")
            meta_end = pos + 2 + meta_len
            if meta_end > size:
                break
            meta = decode_meta(bytes(buf[pos + 2 : meta_end]))
            if meta.option & OPTION_DATA:
                if meta_end + 2 > size:
                    break
                data_end = meta_end + 2 + ((buf[meta_end] << 8) | buf[meta_end + 1])
                if data_end > size:
                    break
                frames.append(Frame(meta, bytes(buf[meta_end + 2 : data_end])))
                pos = data_end
            else:
                frames.append(Frame(meta, None))
                pos = meta_end
        if pos:
            del buf[:pos]
        return frames


class SessionWriter:
    """One Mux.Cool session's frames (stream transfer type), as Xray's ``mux.Writer``."""

    __slots__ = ("_followup", "session_id", "target")

    def __init__(self, session_id: int, target: Destination) -> None:
        self.session_id = session_id
        self.target = target
        self._followup = False

    def _meta(self, option: int) -> FrameMeta:
        if self._followup:
            return FrameMeta(self.session_id, Status.KEEP, option)
        self._followup = True
        return FrameMeta(self.session_id, Status.NEW, option, self.target)

    def write(self, data: bytes) -> bytes:
        """Frames for *data*: metadata only if empty, else 8 KiB data chunks."""
        if not data:
            return encode_meta(self._meta(0))
        view = memoryview(data)
        return b"".join(
            [
                encode_frame(self._meta(OPTION_DATA), bytes(view[i : i + STREAM_CHUNK]))
                for i in range(0, len(view), STREAM_CHUNK)
            ]
        )

    def close(self, error: bool = False) -> bytes:
        """The End frame (option 0x02 when the session failed)."""
        return encode_meta(FrameMeta(self.session_id, Status.END, OPTION_ERROR if error else 0))
