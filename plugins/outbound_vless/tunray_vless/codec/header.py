"""VLESS request and response headers (``proxy/vless/encoding/encoding.go``).

Request::

    version(1)=0 | user id(16) | addonsLen(1) | addons(addonsLen) | command(1) | [address]

``command`` is 01 TCP, 02 UDP, 03 Mux (``v1.mux.cool``), 04 Reverse (``v1.rvs.cool``);
for Mux and Reverse no address follows, otherwise the address is "port then address"
(:mod:`tunray_vless.codec.address`).  Response::

    version(1)=0 | addonsLen(1) | addons(addonsLen) | body...

The client only ever sends version 0 and rejects a response of any other version.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

from tunray.net.address import Destination, Network

from tunray_vless.codec.addons import NO_ADDONS, Addons, decode_addons, encode_addons
from tunray_vless.codec.address import decode_address, encode_address
from tunray_vless.codec.errors import CodecError

VERSION = 0
MUX_DOMAIN = "v1.mux.cool"
RVS_DOMAIN = "v1.rvs.cool"


class Command(enum.IntEnum):
    TCP = 1
    UDP = 2
    MUX = 3
    RVS = 4


_NO_ADDRESS = {Command.MUX: MUX_DOMAIN, Command.RVS: RVS_DOMAIN}


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded request header; Mux/Reverse carry ``v1.mux.cool:0`` / ``v1.rvs.cool:0``."""

    user_id: uuid.UUID
    command: Command
    destination: Destination
    addons: Addons = NO_ADDONS


def _addons_block(addons: Addons) -> bytes:
    raw = encode_addons(addons)
    if len(raw) > 255:
        raise CodecError(f"addons of {len(raw)} bytes do not fit the 1-byte length")
    return bytes((len(raw),)) + raw


def encode_request(
    user_id: uuid.UUID, command: int, destination: Destination | None, addons: Addons = NO_ADDONS
) -> bytes:
    """The request header bytes; *destination* is required unless the command is Mux/Reverse.

    Any command byte is accepted (Xray encodes unknown ones with an address; servers
    refuse them).  Raises :class:`CodecError` for an address the format cannot carry.
    """
    if not 0 <= command <= 0xFF:
        raise CodecError(f"command {command} is not a byte")
    head = bytes((VERSION,)) + user_id.bytes + _addons_block(addons) + bytes((command,))
    if command in _NO_ADDRESS:
        return head
    if destination is None:
        raise CodecError(f"command {command} needs a destination")
    return head + encode_address(destination.host, destination.port)


def decode_request(data: bytes | bytearray | memoryview) -> tuple[Request, int] | None:
    """Parse a request header at the start of *data*.

    Returns ``(request, header_length)``, or ``None`` while the header is incomplete.
    Raises :class:`CodecError` for a version other than 0, bad addons, an unknown
    command or a bad address (Xray: "invalid request address").
    """
    size = len(data)
    if size < 1:
        return None
    if data[0] != VERSION:
        raise CodecError(f"invalid request version {data[0]}")
    if size < 18:
        return None
    user_id = uuid.UUID(bytes=bytes(data[1:17]))
    addons_end = 18 + data[17]
    if size < addons_end + 1:
        return None
    addons = decode_addons(bytes(data[18:addons_end])) if data[17] else NO_ADDONS
    raw_command = data[addons_end]
    try:
        command = Command(raw_command)
    except ValueError:
        raise CodecError(f"invalid request address (unknown command {raw_command})") from None
    if command in _NO_ADDRESS:
        dest = Destination(Network.TCP, _NO_ADDRESS[command], 0)
        return Request(user_id, command, dest, addons), addons_end + 1
    try:
        parsed = decode_address(data, addons_end + 1)
    except CodecError as exc:
        raise CodecError(f"invalid request address: {exc}") from None
    if parsed is None:
        return None
    host, port, end = parsed
    network = Network.UDP if command is Command.UDP else Network.TCP
    return Request(user_id, command, Destination(network, host, port), addons), end


def encode_response(addons: Addons = NO_ADDONS) -> bytes:
    """A response header (servers send ``00 00``)."""
    return bytes((VERSION,)) + _addons_block(addons)


class ResponseParser:
    """Incremental response-header parser for the client.

    Feed downlink bytes until :meth:`feed` returns the body bytes that followed the
    header (possibly ``b""``); until then it returns ``None``.  Feeding after the
    header is complete is a programming error.
    """

    __slots__ = ("_buf", "addons", "done")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.addons: Addons | None = None
        self.done = False

    def feed(self, data: bytes) -> bytes | None:
        if self.done:
            raise RuntimeError("response header already parsed")
        buf = self._buf
        buf += data
        if not buf:
            return None
        if buf[0] != VERSION:
            raise CodecError(f"unexpected response version {buf[0]}, expecting {VERSION}")
        if len(buf) < 2:
            return None
        end = 2 + buf[1]
        if len(buf) < end:
            return None
        self.addons = decode_addons(bytes(buf[2:end])) if buf[1] else NO_ADDONS
        self.done = True
        rest = bytes(buf[end:])
        self._buf = bytearray()
        return rest
