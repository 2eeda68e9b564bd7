"""The VLESS header addons: a tiny protobuf message, encoded and decoded by hand.

``message Addons { string Flow = 1; bytes Seed = 2; }`` (``proxy/vless/encoding/addons.proto``).
Field 1 and 2 are both length-delimited (wire type 2), so the Vision addon is
``0A 10 "xtls-rprx-vision"``: tag ``(1 << 3) | 2``, length 16, the string.  Unknown
fields are skipped the way protobuf does; groups and truncated input are errors.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunray.net.protobuf import VarintError, decode_varint, encode_varint

from tunray_vless.codec.errors import CodecError

FLOW_VISION = "xtls-rprx-vision"

_WT_VARINT = 0
_WT_FIXED64 = 1
_WT_LEN = 2
_WT_FIXED32 = 5


@dataclass(frozen=True, slots=True)
class Addons:
    flow: str = ""
    seed: bytes = b""


NO_ADDONS = Addons()
VISION_ADDONS = Addons(flow=FLOW_VISION)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    try:
        value, pos = decode_varint(data, pos)
    except VarintError as exc:
        raise CodecError(f"{exc} in addons") from None
    return value & 0xFFFFFFFFFFFFFFFF, pos


def encode_addons(addons: Addons) -> bytes:
    """Protobuf bytes of *addons*; empty fields are omitted (proto3), so ``Addons()`` is ``b""``."""
    out = bytearray()
    if addons.flow:
        raw = addons.flow.encode()
        out += b"\x0a" + encode_varint(len(raw)) + raw
    if addons.seed:
        out += b"\x12" + encode_varint(len(addons.seed)) + addons.seed
    return bytes(out)


def decode_addons(data: bytes) -> Addons:
    """Parse protobuf bytes into :class:`Addons`; raises :class:`CodecError`."""
    flow = ""
    seed = b""
    pos = 0
    size = len(data)
    while pos < size:
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise CodecError("protobuf field number 0 in addons")
        if wire == _WT_VARINT:
            _, pos = _read_varint(data, pos)
        elif wire == _WT_FIXED64:
            pos += 8
        elif wire == _WT_FIXED32:
            pos += 4
        elif wire == _WT_LEN:
            length, pos = _read_varint(data, pos)
            end = pos + length
            if end > size:
                raise CodecError("truncated field in addons")
            value = data[pos:end]
            pos = end
            if field == 1:
                try:
                    flow = value.decode()
                except UnicodeDecodeError as exc:
                    raise CodecError("addons flow is not UTF-8") from exc
            elif field == 2:
                seed = value
        else:
            raise CodecError(f"unsupported protobuf wire type {wire} in addons")
        if pos > size:
            raise CodecError("truncated field in addons")
    return Addons(flow, seed)
