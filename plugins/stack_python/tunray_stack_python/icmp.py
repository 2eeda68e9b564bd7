"""ICMP echo: requests to any address get a local reply; nothing is proxied (as Xray).

ICMPv4 (RFC 792): type (8 request / 0 reply), code, checksum over the ICMP message.
ICMPv6 (RFC 4443): type (128 request / 129 reply), code, checksum including the IPv6
pseudo-header (next header 58).
"""

from __future__ import annotations

from tunray_stack_python.checksum import finish, pseudo_sum, sum_of, valid
from tunray_stack_python.ip import PROTO_ICMP, PROTO_ICMPV6, ip_header, vnet_header

ECHO_REQUEST_V4, ECHO_REPLY_V4 = 8, 0
ECHO_REQUEST_V6, ECHO_REPLY_V6 = 128, 129


def echo_reply(version: int, src: bytes, dst: bytes, message: bytes, vnet: bool) -> bytes | str:
    """The reply to the ICMP *message* sent from *src* to *dst*, or a drop reason."""
    if len(message) < 8:
        return "icmp_truncated"
    if version == 4:
        if not valid(sum_of(message)):
            return "icmp_bad_checksum"
        if message[0] != ECHO_REQUEST_V4:
            return "icmp_ignored"
        reply_type, proto, pseudo = ECHO_REPLY_V4, PROTO_ICMP, 0
    else:
        if not valid(pseudo_sum(src, dst, PROTO_ICMPV6, len(message)) + sum_of(message)):
            return "icmp_bad_checksum"
        if message[0] != ECHO_REQUEST_V6:
            return "icmp_ignored"
        reply_type, proto = ECHO_REPLY_V6, PROTO_ICMPV6
        pseudo = pseudo_sum(dst, src, PROTO_ICMPV6, len(message))
    if message[1] != 0:
        return "icmp_ignored"
    body = message[4:]
    head = bytes((reply_type, 0))
    csum = finish(pseudo + sum_of(head + b"\0\0" + body))
    reply = head + csum.to_bytes(2, "big") + body
    prefix = vnet_header() if vnet else b""
    return prefix + ip_header(version, dst, src, proto, len(reply)) + reply
