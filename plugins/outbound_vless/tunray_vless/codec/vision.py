"""XTLS Vision (flow ``xtls-rprx-vision``): padding, unpadding and the TLS filter.

Theory of operation.  Vision runs *inside* an outer TLS (or REALITY) connection and
looks at the *inner* traffic, which for HTTPS is itself TLS.  During the inner
handshake every write is wrapped in padding blocks so record lengths leak nothing::

    [user id(16), first block of the connection only]
    command(1) | contentLen(2, BE) | paddingLen(2, BE) | content | paddingLen zero bytes

    command 00 continue: another block follows
            01 end:      padding is over, later bytes are plain (still inside outer TLS)
            02 direct:   padding is over and the sender continues on the raw TCP socket,
                         no longer encrypting with the outer TLS

One :class:`TrafficState` per connection is shared by the two directions.  Its TLS
filter inspects the first 8 buffers seen in either direction (one shared counter, as
in Xray): a ClientHello (``16 03 .. .. .. 01``) marks inner TLS; a ServerHello
(``16 03 03 .. .. 02``) marks TLS 1.2+, yields the cipher suite, and if its bytes hold
``00 2B 00 02 03 04`` (supported_versions = TLS 1.3) with a cipher other than
TLS_AES_128_CCM_8_SHA256, enables the direct switch.

:class:`VisionPadder` pads one direction (the client's uplink).  The first write after
the inner handshake that is made of complete application-data records ends padding
with command 01, or 02 when the direct switch is enabled; non-TLS traffic stops being
padded once the filter has seen its buffers.  Writes are cut into 8192-byte buffers as
Xray reads them, and buffers of 8171 bytes or more are split (at the last ``17 03 03``
if sensible) so that each block fits an 8192-byte buffer.

:class:`VisionUnpadder` is the other direction (the client's downlink), incremental:
feed what one read of the outer TLS returned and get content chunks, and a
:class:`DirectSwitch` marker exactly where the peer's command-02 block ends.  Bytes
after that marker come from the raw socket: the caller must stop decrypting and feed
everything the outer TLS had not yet decrypted, then the socket, as plain content.
Nothing here reads a clock or a socket; randomness is injected.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

from tunray_vless.codec.errors import CodecError

BUF_SIZE = 8192
BLOCK_OVERHEAD = 21  # user id + block header, the most a block adds in front of content
RESHAPE_AT = BUF_SIZE - BLOCK_OVERHEAD
DEFAULT_SEED = (900, 500, 900, 256)
PACKETS_TO_FILTER = 8

CMD_CONTINUE = 0
CMD_END = 1
CMD_DIRECT = 2

TLS13_SUPPORTED_VERSIONS = b"\x00\x2b\x00\x02\x03\x04"
TLS_CLIENT_HANDSHAKE = b"\x16\x03"
TLS_SERVER_HANDSHAKE = b"\x16\x03\x03"
TLS_APPLICATION_DATA = b"\x17\x03\x03"
TLS13_CIPHERS = {
    0x1301: "TLS_AES_128_GCM_SHA256",
    0x1302: "TLS_AES_256_GCM_SHA384",
    0x1303: "TLS_CHACHA20_POLY1305_SHA256",
    0x1304: "TLS_AES_128_CCM_SHA256",
    0x1305: "TLS_AES_128_CCM_8_SHA256",
}
_NO_DIRECT_CIPHER = 0x1305


class TrafficState:
    """What one connection has learnt about its inner traffic (shared by both directions)."""

    __slots__ = (
        "cipher",
        "enable_xtls",
        "is_tls",
        "is_tls12_or_above",
        "packets_to_filter",
        "remaining_server_hello",
        "user_id",
    )

    def __init__(self, user_id: uuid.UUID | bytes) -> None:
        self.user_id = user_id.bytes if isinstance(user_id, uuid.UUID) else bytes(user_id)
        if len(self.user_id) != 16:
            raise ValueError("a Vision user id is 16 bytes")
        self.packets_to_filter = PACKETS_TO_FILTER
        self.enable_xtls = False
        self.is_tls12_or_above = False
        self.is_tls = False
        self.cipher = 0
        self.remaining_server_hello = -1

    def filter(self, buffers: list[bytes]) -> None:
        """Inspect *buffers* (one read or one write) while the filter budget lasts."""
        for b in buffers:
            self.packets_to_filter -= 1
            size = len(b)
            if size >= 6:
                if b[:3] == TLS_SERVER_HANDSHAKE and b[5] == 0x02:
                    self.remaining_server_hello = ((b[3] << 8) | b[4]) + 5
                    self.is_tls12_or_above = True
                    self.is_tls = True
                    if size >= 79 and self.remaining_server_hello >= 79:
                        at = 43 + b[43] + 1  # after the session id
                        suite = b[at : at + 2]
                        self.cipher = int.from_bytes(suite, "big") if len(suite) == 2 else 0
                elif b[:2] == TLS_CLIENT_HANDSHAKE and b[5] == 0x01:
                    self.is_tls = True
            if self.remaining_server_hello > 0:
                end = min(self.remaining_server_hello, size)
                self.remaining_server_hello -= size
                if TLS13_SUPPORTED_VERSIONS in b[:end]:
                    if self.cipher in TLS13_CIPHERS and self.cipher != _NO_DIRECT_CIPHER:
                        self.enable_xtls = True
                    self.packets_to_filter = 0
                    return
                if self.remaining_server_hello <= 0:
                    self.packets_to_filter = 0
                    return


def is_complete_records(data: bytes) -> bool:
    """True if *data* is whole TLS 1.2+ application-data records and nothing else."""
    pos = 0
    size = len(data)
    while pos < size:
        if size - pos < 5 or data[pos : pos + 3] != TLS_APPLICATION_DATA:
            return False
        length = (data[pos + 3] << 8) | data[pos + 4]
        pos += 5 + length
        if length == 0 or pos > size:
            return False
    return True


def reshape(buffers: list[bytes]) -> list[bytes]:
    """Split each buffer of 8171+ bytes in two so a block header fits in front of it."""
    if all(len(b) < RESHAPE_AT for b in buffers):
        return buffers
    out: list[bytes] = []
    for b in buffers:
        if len(b) < RESHAPE_AT:
            out.append(b)
            continue
        cut = b.rfind(TLS_APPLICATION_DATA)
        if cut < BLOCK_OVERHEAD or cut > RESHAPE_AT:
            cut = BUF_SIZE // 2
        out.append(b[:cut])
        out.append(b[cut:])
    return out


class VisionPadder:
    """Pads one direction of a Vision connection (client: the uplink).

    :meth:`write` returns the bytes to send through the outer TLS.  Once
    :attr:`direct` is true the bytes returned by that write still go through the outer
    TLS, and every later write must go to the raw socket (``write`` then returns its
    input unchanged).  With ``allow_direct=False`` padding ends with command 01 and
    the connection stays inside the outer TLS, which every Vision server accepts.
    """

    __slots__ = ("_rng", "_seed", "_user_id", "allow_direct", "direct", "padding", "state")

    def __init__(
        self,
        state: TrafficState,
        rng: random.Random | None = None,
        seed: tuple[int, int, int, int] = DEFAULT_SEED,
        allow_direct: bool = True,
    ) -> None:
        if len(seed) != 4 or seed[1] <= 0 or seed[3] <= 0 or min(seed) < 0:
            raise ValueError(f"bad Vision padding seed {seed!r}")
        self.state = state
        self._rng = rng if rng is not None else random.SystemRandom()
        self._seed = seed
        self._user_id: bytes | None = state.user_id
        self.allow_direct = allow_direct
        self.padding = True
        self.direct = False

    def _block(self, content: bytes, command: int, long_padding: bool) -> bytes:
        size = len(content)
        s0, s1, s2, s3 = self._seed
        if size < s0 and long_padding:
            pad = self._rng.randrange(s1) + s2 - size
        else:
            pad = self._rng.randrange(s3)
        pad = max(0, min(pad, BUF_SIZE - BLOCK_OVERHEAD - size))
        head = bytes((command, size >> 8, size & 0xFF, pad >> 8, pad & 0xFF))
        if self._user_id is not None:
            head = self._user_id + head
            self._user_id = None
        return b"".join((head, content, bytes(pad)))

    def write_padding_only(self) -> bytes:
        """A block with no content and long padding (hides a lone request header)."""
        if not self.padding:
            return b""
        return self._block(b"", CMD_CONTINUE, True)

    def _ending(self) -> int:
        return CMD_DIRECT if self.state.enable_xtls and self.allow_direct else CMD_END

    def write(self, data: bytes) -> bytes:
        if not self.padding or not data:
            return data
        state = self.state
        buffers = [data[i : i + BUF_SIZE] for i in range(0, len(data), BUF_SIZE)]
        if state.packets_to_filter > 0:
            state.filter(buffers)
        complete = is_complete_records(data)
        buffers = reshape(buffers)
        long_padding = state.is_tls
        last = len(buffers) - 1
        out: list[bytes] = []
        for i, b in enumerate(buffers):
            if state.is_tls and complete and len(b) >= 6 and b[:3] == TLS_APPLICATION_DATA:
                if state.enable_xtls and self.allow_direct:
                    self.direct = True
                out.append(self._block(b, self._ending() if i == last else CMD_CONTINUE, True))
                self.padding = False
                long_padding = False
                continue
            if not state.is_tls12_or_above and state.packets_to_filter <= 1:
                # not TLS 1.2+: stop one packet early, as Xray does for old receivers
                self.padding = False
                out.append(self._block(b, CMD_END, long_padding))
                out.extend(buffers[i + 1 :])
                break
            command = self._ending() if i == last and not self.padding else CMD_CONTINUE
            out.append(self._block(b, command, long_padding))
        return b"".join(out)


@dataclass(frozen=True, slots=True)
class DirectSwitch:
    """The peer's command-02 block ended here: later bytes come from the raw socket."""


_SWITCH = DirectSwitch()
_INITIAL, _HEADER, _BODY, _PLAIN, _DIRECT = range(5)


class VisionUnpadder:
    """Removes Vision padding from one direction (client: the downlink); see module doc.

    :meth:`feed` returns content chunks (``bytes``) and at most one
    :class:`DirectSwitch`, in stream order.  A stream that does not start with the
    user id is passed through unchanged; after a command-01 block everything is plain.
    An unknown command is a :class:`CodecError`.
    """

    __slots__ = ("_buf", "_command", "_content", "_padding", "_phase", "state")

    def __init__(self, state: TrafficState) -> None:
        self.state = state
        self._phase = _INITIAL
        self._buf = b""  # an incomplete user id or block header
        self._command = 0
        self._content = 0
        self._padding = 0

    @property
    def padded(self) -> bool:
        """Still inside (or before) padding blocks."""
        return self._phase < _PLAIN

    @property
    def switched(self) -> bool:
        """The direct switch has been passed: input now is raw-socket bytes."""
        return self._phase == _DIRECT

    def feed(self, data: bytes) -> list[bytes | DirectSwitch]:
        phase = self._phase
        if phase == _DIRECT:
            return [data] if data else []
        chunks: list[bytes] = []
        switch_at: int | None = None
        if phase == _PLAIN:
            if data:
                chunks.append(data)
        else:
            if self._buf:
                data = self._buf + data
                self._buf = b""
            switch_at = self._unpad(memoryview(data), chunks)
        if switch_at is None:
            content = b"".join(chunks)
            if content and self.state.packets_to_filter > 0:
                self.state.filter([content])
            return [content] if content else []
        before = b"".join(chunks[:switch_at])
        after = b"".join(chunks[switch_at:])
        if before and self.state.packets_to_filter > 0:
            self.state.filter([before])
        result: list[bytes | DirectSwitch] = [before] if before else []
        result.append(_SWITCH)
        if after:
            result.append(after)
        return result

    def _unpad(self, view: memoryview, chunks: list[bytes]) -> int | None:
        """Consume *view*; return the index in *chunks* where a direct switch falls."""
        pos = 0
        size = len(view)
        if self._phase == _INITIAL:
            user_id = self.state.user_id
            seen = bytes(view[:16])
            if seen != user_id[: len(seen)]:
                self._phase = _PLAIN
                if size:
                    chunks.append(bytes(view))
                return None
            if size < 16:
                self._buf = seen
                return None
            pos = 16
            self._phase = _HEADER
        while True:
            if self._phase == _HEADER:
                if size - pos < 5:
                    self._buf = bytes(view[pos:])
                    return None
                command = view[pos]
                if command > CMD_DIRECT:
                    raise CodecError(f"unknown Vision command {command}")
                self._command = command
                self._content = (view[pos + 1] << 8) | view[pos + 2]
                self._padding = (view[pos + 3] << 8) | view[pos + 4]
                pos += 5
                self._phase = _BODY
            if self._content:
                take = min(self._content, size - pos)
                if take:
                    chunks.append(bytes(view[pos : pos + take]))
                    pos += take
                    self._content -= take
                if self._content:
                    return None
            if self._padding:
                take = min(self._padding, size - pos)
                pos += take
                self._padding -= take
                if self._padding:
                    return None
            # the block is complete
            if self._command == CMD_CONTINUE:
                self._phase = _HEADER
                continue
            switch_at: int | None = None
            if self._command == CMD_END:
                self._phase = _PLAIN
            else:
                self._phase = _DIRECT
                switch_at = len(chunks)
            if pos < size:  # Xray passes stray bytes after the last block through
                chunks.append(bytes(view[pos:]))
            return switch_at
