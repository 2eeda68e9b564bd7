"""gRPC message framing for Xray's ``gun`` transport, sans-IO.

A gRPC stream body is a sequence of length-prefixed messages (gRPC over HTTP/2,
"Length-Prefixed-Message")::

    +------------+---------------------------+-----------------------+
    | Compressed | Message-Length (u32, BE)  | Message (protobuf)    |
    |  1 byte    | 4 bytes                   | Message-Length bytes  |
    +------------+---------------------------+-----------------------+

Xray's messages (``transport/internet/grpc/encoding/stream.proto``)::

    message Hunk      { bytes data = 1; }           // service method Tun
    message MultiHunk { repeated bytes data = 1; }  // service method TunMulti

Both put each chunk in field 1 with wire type 2 (tag byte ``0x0A``), then a varint
length, then the bytes; a Hunk is byte-for-byte a MultiHunk with one chunk, so one
encoder and one decoder serve both.  Unknown fields are skipped, as protobuf requires.
"""

from __future__ import annotations

from collections.abc import Iterator

from tunray.net.protobuf import VarintError, decode_varint, encode_varint

MAX_MESSAGE = 16 << 20
DEFAULT_CHUNK = 32 << 10  # payload bytes per message we send
_TAG_DATA = 0x0A  # field 1, wire type 2 (length-delimited)


class GrpcFramingError(ConnectionError):
    """The peer's gRPC body is not a stream of Hunk messages."""


def encode_hunk(data: bytes | bytearray | memoryview) -> bytes:
    """One gRPC message holding ``Hunk{data}`` (equally ``MultiHunk{[data]}``)."""
    body_len = len(data)
    field_head = bytes((_TAG_DATA,)) + encode_varint(body_len)
    msg_len = len(field_head) + body_len
    return b"\x00" + msg_len.to_bytes(4, "big") + field_head + bytes(data)


def encode_hunks(data: bytes | bytearray | memoryview, chunk: int = DEFAULT_CHUNK) -> bytes:
    n = len(data)
    if n <= chunk:
        return encode_hunk(data)
    view = memoryview(data)
    return b"".join(encode_hunk(view[i : i + chunk]) for i in range(0, n, chunk))


def _read_varint(buf: bytes | memoryview, i: int, end: int) -> tuple[int, int]:
    try:
        return decode_varint(buf, i, end)
    except VarintError:
        raise GrpcFramingError("truncated or overlong protobuf varint") from None


def hunk_chunks(msg: bytes | memoryview) -> Iterator[bytes]:
    """The ``data`` fields of one Hunk/MultiHunk message body."""
    i, end = 0, len(msg)
    while i < end:
        key, i = _read_varint(msg, i, end)
        wire = key & 7
        if wire == 2:
            length, i = _read_varint(msg, i, end)
            if i + length > end:
                raise GrpcFramingError("protobuf field runs past the message")
            if key >> 3 == 1:
                yield bytes(msg[i : i + length])
            i += length
        elif wire == 0:
            _, i = _read_varint(msg, i, end)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise GrpcFramingError(f"unsupported protobuf wire type {wire}")
        if i > end:
            raise GrpcFramingError("protobuf field runs past the message")


class MessageReader:
    """Split a gRPC body into messages and hand out the Hunk payloads."""

    __slots__ = ("_buf", "max_message")

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self.max_message = max_message

    def feed(self, data: bytes | bytearray) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos, end = 0, len(buf)
        view = memoryview(buf)
        try:
            while end - pos >= 5:
                flag = buf[pos]
                length = int.from_bytes(buf[pos + 1 : pos + 5], "big")
                if flag & 1:
                    raise GrpcFramingError("compressed gRPC message, but no compression was negotiated")
                if length > self.max_message:
                    raise GrpcFramingError(f"gRPC message of {length} bytes exceeds {self.max_message}")
                if end - pos - 5 < length:
                    break
                out.extend(c for c in hunk_chunks(view[pos + 5 : pos + 5 + length]) if c)
                pos += 5 + length
        finally:
            view.release()
        del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)
