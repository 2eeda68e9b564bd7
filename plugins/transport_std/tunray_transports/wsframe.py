"""WebSocket framing for the client side (RFC 6455 section 5), sans-IO.

Theory of operation.  :class:`WebSocketConnection` turns application bytes into masked
binary frames (``send``) and turns received bytes into events (``receive``).  It never
touches a socket: bytes it must send on its own (a Pong answering a Ping, the Close
reply) queue up and are taken with ``data_to_send()``.

Frame layout (RFC 6455 5.2)::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-------+-+-------------+-------------------------------+
    |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
    |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
    |N|V|V|V|       |S|             |   (if payload len==126/127)   |
    +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
    |  ... extended length (64 bits) ... |  Masking-key, if MASK set  |
    +-------------------------------+-------------------------------+
    |                         Payload Data                          |

Invariants: a client masks every frame it sends and a server never masks (a masked
server frame is a protocol error, 1002).  Data frames are streamed: a payload is handed
out as soon as some of it has arrived, so a large frame never has to sit whole in memory;
control frames (<= 125 bytes, never fragmented) are buffered whole.  Fragmentation is
tracked with one flag, ``in message``; the legal (flag, opcode kind) pairs are the
table :data:`_FRAGMENT`.  Text and binary payloads are both handed out as bytes.
Masking XORs the payload with the repeated key as one big integer (no per-byte loop).
"""

from __future__ import annotations

import enum
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

MAX_CONTROL = 125
DEFAULT_MAX_FRAME = 1 << 16  # bytes of payload per frame we send


class Opcode(enum.IntEnum):
    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    NO_STATUS = 1005


class ProtocolError(ConnectionError):
    """The peer broke RFC 6455; ``code`` is the Close code to answer with."""

    def __init__(self, message: str, code: int = CloseCode.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Data:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


Event = Data | Ping | Pong | Close


def mask(data: bytes | bytearray | memoryview, key: bytes, offset: int = 0) -> bytes:
    """XOR *data* with the 4-byte *key*; *offset* is the position of data[0] in the payload."""
    n = len(data)
    if n == 0:
        return b""
    r = offset & 3
    if r:
        key = key[r:] + key[:r]
    stream = (key * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")).to_bytes(n, "little")


def encode_frame(
    opcode: int, payload: bytes | bytearray | memoryview, mask_key: bytes | None, fin: bool = True
) -> bytes:
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    m = 0x80 if mask_key is not None else 0
    if n < 126:
        head = bytes((b0, m | n))
    elif n < 0x10000:
        head = struct.pack("!BBH", b0, m | 126, n)
    else:
        head = struct.pack("!BBQ", b0, m | 127, n)
    if mask_key is None:
        return head + bytes(payload)
    return head + mask_key + mask(payload, mask_key)


class _Part(enum.Enum):
    HEADER = "header"
    PAYLOAD = "payload"


class _Kind(enum.Enum):
    START = "start"  # TEXT or BINARY
    CONTINUATION = "continuation"
    CONTROL = "control"


# (in message?, kind, FIN) -> in message afterwards; a missing pair is a protocol error.
# Control frames may interleave a fragmented message but are never fragmented themselves.
_FRAGMENT: dict[tuple[bool, _Kind, bool], bool] = {
    (False, _Kind.START, True): False,
    (False, _Kind.START, False): True,
    (True, _Kind.CONTINUATION, True): False,
    (True, _Kind.CONTINUATION, False): True,
    (False, _Kind.CONTROL, True): False,
    (True, _Kind.CONTROL, True): True,
}

_KINDS = {
    Opcode.TEXT: _Kind.START,
    Opcode.BINARY: _Kind.START,
    Opcode.CONTINUATION: _Kind.CONTINUATION,
    Opcode.CLOSE: _Kind.CONTROL,
    Opcode.PING: _Kind.CONTROL,
    Opcode.PONG: _Kind.CONTROL,
}


class FrameReader:
    """Parse frames from a server (unmasked); see the module docstring."""

    __slots__ = ("_buf", "_control", "_in_message", "_key", "_offset", "_opcode", "_part", "_remaining")

    def __init__(self, *, accept_masked: bool = False) -> None:
        self._buf = bytearray()
        self._part = _Part.HEADER
        self._opcode = Opcode.BINARY
        self._remaining = 0
        self._in_message = False
        self._control = bytearray()
        self._key: bytes | None = b"" if accept_masked else None  # b"" = masked frames allowed
        self._offset = 0

    def feed(self, data: bytes | bytearray) -> list[Event]:
        buf = self._buf
        buf += data
        out: list[Event] = []
        pos = 0
        while True:
            if self._part is _Part.HEADER:
                used = self._header(buf, pos)
                if used == 0:
                    break
                pos += used
                if self._remaining == 0:
                    self._finish(out)
                continue
            take = min(self._remaining, len(buf) - pos)
            if take == 0:
                break
            chunk = memoryview(buf)[pos : pos + take]
            payload = mask(chunk, self._key, self._offset) if self._key else bytes(chunk)
            chunk.release()
            pos += take
            self._offset += take
            self._remaining -= take
            if self._opcode >= Opcode.CLOSE:
                self._control += payload
            else:
                out.append(Data(payload))
            if self._remaining == 0:
                self._finish(out)
        del buf[:pos]
        return out

    def _header(self, buf: bytearray, pos: int) -> int:
        avail = len(buf) - pos
        if avail < 2:
            return 0
        b0, b1 = buf[pos], buf[pos + 1]
        n = b1 & 0x7F
        need = 2 + (2 if n == 126 else 8 if n == 127 else 0) + (4 if b1 & 0x80 else 0)
        if avail < need:
            return 0
        if b0 & 0x70:
            raise ProtocolError("reserved bits set without a negotiated extension")
        try:
            opcode = Opcode(b0 & 0x0F)
        except ValueError:
            raise ProtocolError(f"unknown opcode {b0 & 0x0F:#x}") from None
        fin = bool(b0 & 0x80)
        kind = _KINDS[opcode]
        after = _FRAGMENT.get((self._in_message, kind, fin))
        if after is None:
            if kind is _Kind.CONTROL:
                raise ProtocolError("fragmented control frame")
            if kind is _Kind.CONTINUATION:
                raise ProtocolError("continuation frame without a message")
            raise ProtocolError("new message inside a fragmented one")
        if kind is _Kind.CONTROL and n > MAX_CONTROL:
            raise ProtocolError("control frame longer than 125 bytes")
        i = pos + 2
        if n == 126:
            (n,) = struct.unpack_from("!H", buf, i)
            i += 2
        elif n == 127:
            (n,) = struct.unpack_from("!Q", buf, i)
            if n >> 63:
                raise ProtocolError("payload length has its top bit set")
            i += 8
        if b1 & 0x80:
            if self._key is None:
                raise ProtocolError("the server masked a frame")
            self._key = bytes(buf[i : i + 4])
            i += 4
        elif self._key:
            self._key = b""
        self._in_message = after
        # Data frames (any opcode below CLOSE) stream out; control payloads are buffered.
        self._opcode = opcode if kind is _Kind.CONTROL else Opcode.BINARY
        if kind is _Kind.CONTROL:
            self._control.clear()
        self._remaining = n
        self._offset = 0
        self._part = _Part.PAYLOAD
        return i - pos

    def _finish(self, out: list[Event]) -> None:
        self._part = _Part.HEADER
        op = self._opcode
        if op < Opcode.CLOSE:
            return
        payload = bytes(self._control)
        self._control.clear()
        if op is Opcode.PING:
            out.append(Ping(payload))
        elif op is Opcode.PONG:
            out.append(Pong(payload))
        else:
            out.append(_parse_close(payload))


def _parse_close(payload: bytes) -> Close:
    if not payload:
        return Close(CloseCode.NO_STATUS, "")
    if len(payload) == 1:
        raise ProtocolError("close frame with a 1-byte payload")
    (code,) = struct.unpack_from("!H", payload)
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        raise ProtocolError("close reason is not UTF-8") from None
    return Close(code, reason)


class State(enum.Enum):
    OPEN = "open"
    CLOSE_SENT = "close-sent"  # we sent Close, waiting for the reply
    CLOSE_RECEIVED = "close-received"  # the peer sent Close and we replied
    CLOSED = "closed"


class WebSocketConnection:
    """Client side of an open WebSocket (after the HTTP upgrade)."""

    __slots__ = ("_out", "_random", "max_frame", "reader", "state")

    def __init__(
        self, *, random: Callable[[int], bytes] = os.urandom, max_frame: int = DEFAULT_MAX_FRAME
    ) -> None:
        self.reader = FrameReader()
        self.state = State.OPEN
        self._out = bytearray()
        self._random = random
        self.max_frame = max_frame

    def send(self, data: bytes | bytearray | memoryview) -> bytes:
        """Binary frames carrying *data* (one frame per ``max_frame`` bytes)."""
        if self.state is not State.OPEN:
            raise ConnectionResetError("WebSocket is closing")
        n = len(data)
        step = self.max_frame
        if n <= step:
            return encode_frame(Opcode.BINARY, data, self._random(4))
        view = memoryview(data)
        parts = [encode_frame(Opcode.BINARY, view[i : i + step], self._random(4)) for i in range(0, n, step)]
        return b"".join(parts)

    def ping(self, payload: bytes = b"") -> bytes:
        return encode_frame(Opcode.PING, payload[:MAX_CONTROL], self._random(4))

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> bytes:
        """The Close frame to send, or b"" if one was already sent."""
        if self.state in (State.CLOSE_SENT, State.CLOSED, State.CLOSE_RECEIVED):
            return b""
        self.state = State.CLOSE_SENT
        return encode_frame(Opcode.CLOSE, struct.pack("!H", code) + reason.encode()[:123], self._random(4))

    def receive(self, data: bytes | bytearray) -> list[Event]:
        """Events in *data*; Pings and Close get their answers queued in ``data_to_send``."""
        events = self.reader.feed(data)
        for ev in events:
            if isinstance(ev, Ping):
                if self.state is State.OPEN:
                    self._out += encode_frame(Opcode.PONG, ev.payload, self._random(4))
            elif isinstance(ev, Close):
                if self.state is State.OPEN:
                    code = ev.code if ev.code != CloseCode.NO_STATUS else CloseCode.NORMAL
                    self._out += encode_frame(Opcode.CLOSE, struct.pack("!H", code), self._random(4))
                    self.state = State.CLOSE_RECEIVED
                else:
                    self.state = State.CLOSED
        return events

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out
