"""Sans-IO VLESS wire codecs: header, plain UDP, Mux.Cool/XUDP, XTLS Vision.

Every malformed input raises :class:`CodecError`; nothing here touches a socket,
an event loop or a clock.
"""

from __future__ import annotations

from tunray_vless.codec.addons import FLOW_VISION, NO_ADDONS, VISION_ADDONS, Addons
from tunray_vless.codec.errors import CodecError
from tunray_vless.codec.header import (
    MUX_DOMAIN,
    Command,
    Request,
    ResponseParser,
    decode_request,
    encode_request,
    encode_response,
)
from tunray_vless.codec.udp import PacketDecoder, encode_packet, encode_packets
from tunray_vless.codec.vision import DirectSwitch, TrafficState, VisionPadder, VisionUnpadder
from tunray_vless.codec.xudp import XudpReader, XudpWriter, global_id

__all__ = [
    "FLOW_VISION",
    "MUX_DOMAIN",
    "NO_ADDONS",
    "VISION_ADDONS",
    "Addons",
    "CodecError",
    "Command",
    "DirectSwitch",
    "PacketDecoder",
    "Request",
    "ResponseParser",
    "TrafficState",
    "VisionPadder",
    "VisionUnpadder",
    "XudpReader",
    "XudpWriter",
    "decode_request",
    "encode_packet",
    "encode_packets",
    "encode_request",
    "encode_response",
    "global_id",
]
