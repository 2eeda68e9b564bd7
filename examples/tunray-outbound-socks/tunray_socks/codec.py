"""SOCKS5 wire format (RFC 1928, RFC 1929), sans-IO: bytes in, values out.

Every parser takes the bytes received so far and returns ``(value, consumed)``, or
``None`` when more bytes are needed; a malformed message raises :class:`SocksError`.
Layouts, all integers big-endian::

    greeting   VER=5 | NMETHODS | METHODS...
    choice     VER=5 | METHOD                     (0 none, 2 user/pass, 0xFF refused)
    auth       VER=1 | ULEN | UNAME | PLEN | PASSWD
    auth reply VER=1 | STATUS                     (0 = success)
    request    VER=5 | CMD | RSV=0 | ATYP | DST.ADDR | DST.PORT   (CMD 1 connect, 3 udp)
    reply      VER=5 | REP | RSV=0 | ATYP | BND.ADDR | BND.PORT
    udp        RSV=0 0 | FRAG | ATYP | DST.ADDR | DST.PORT | DATA
    ATYP       1 = IPv4 (4 bytes), 3 = domain (1-byte length + name), 4 = IPv6 (16 bytes)
"""

from __future__ import annotations

import ipaddress
import struct

from tunray.net.address import Host

VERSION = 5
NO_AUTH = 0
USER_PASS = 2
NO_ACCEPTABLE = 0xFF
CONNECT = 1
UDP_ASSOCIATE = 3
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 1, 3, 4

REPLIES = {
    0: "succeeded",
    1: "general SOCKS server failure",
    2: "connection not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}


class SocksError(ConnectionError):
    """The SOCKS server refused, or spoke something that is not SOCKS5."""


def greeting(with_auth: bool) -> bytes:
    methods = bytes([NO_AUTH, USER_PASS]) if with_auth else bytes([NO_AUTH])
    return bytes([VERSION, len(methods)]) + methods


def auth_request(user: str, password: str) -> bytes:
    u, p = user.encode(), password.encode()
    if not 0 < len(u) < 256 or len(p) > 255:
        raise SocksError("SOCKS user must be 1-255 bytes and pass at most 255")
    return bytes([1, len(u)]) + u + bytes([len(p)]) + p


def encode_address(host: Host, port: int) -> bytes:
    if isinstance(host, ipaddress.IPv4Address):
        return bytes([ATYP_IPV4]) + host.packed + struct.pack("!H", port)
    if isinstance(host, ipaddress.IPv6Address):
        return bytes([ATYP_IPV6]) + host.packed + struct.pack("!H", port)
    try:
        name = host.encode("idna")  # punycode: the wire carries ASCII names
    except UnicodeError:
        raise SocksError(f"domain {host!r} cannot be encoded") from None
    if not 0 < len(name) < 256:
        raise SocksError(f"domain {host!r} does not fit a SOCKS address")
    return bytes([ATYP_DOMAIN, len(name)]) + name + struct.pack("!H", port)


def request(cmd: int, host: Host, port: int) -> bytes:
    return bytes([VERSION, cmd, 0]) + encode_address(host, port)


def decode_address(buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[Host, int, int] | None:
    """``(host, port, end offset)`` of the address at *offset*, or None if incomplete."""
    if len(buf) <= offset:
        return None
    atyp = buf[offset]
    if atyp == ATYP_IPV4:
        end = offset + 1 + 4 + 2
        if len(buf) < end:
            return None
        host: Host = ipaddress.IPv4Address(bytes(buf[offset + 1 : offset + 5]))
    elif atyp == ATYP_IPV6:
        end = offset + 1 + 16 + 2
        if len(buf) < end:
            return None
        host = ipaddress.IPv6Address(bytes(buf[offset + 1 : offset + 17]))
    elif atyp == ATYP_DOMAIN:
        if len(buf) < offset + 2:
            return None
        n = buf[offset + 1]
        end = offset + 2 + n + 2
        if len(buf) < end:
            return None
        host = bytes(buf[offset + 2 : offset + 2 + n]).decode("ascii", errors="replace").lower()
    else:
        raise SocksError(f"unknown SOCKS address type {atyp}")
    (port,) = struct.unpack_from("!H", buf, end - 2)
    return host, port, end


def parse_choice(buf: bytes | bytearray) -> tuple[int, int] | None:
    if len(buf) < 2:
        return None
    if buf[0] != VERSION:
        raise SocksError(f"not a SOCKS5 server (version byte {buf[0]})")
    return buf[1], 2


def parse_auth_reply(buf: bytes | bytearray) -> tuple[bool, int] | None:
    if len(buf) < 2:
        return None
    return buf[1] == 0, 2


def parse_reply(buf: bytes | bytearray) -> tuple[tuple[int, Host, int], int] | None:
    """``((rep, bound host, bound port), consumed)``."""
    if len(buf) < 4:
        return None
    if buf[0] != VERSION:
        raise SocksError(f"not a SOCKS5 reply (version byte {buf[0]})")
    addr = decode_address(buf, 3)
    if addr is None:
        return None
    host, port, end = addr
    return (buf[1], host, port), end


def udp_packet(host: Host, port: int, data: bytes) -> bytes:
    return b"\x00\x00\x00" + encode_address(host, port) + data


def parse_udp(buf: bytes) -> tuple[Host, int, bytes]:
    """A whole datagram from the relay: ``(source host, source port, payload)``."""
    if len(buf) < 4 or buf[2] != 0:
        raise SocksError("short or fragmented SOCKS UDP datagram")
    addr = decode_address(buf, 3)
    if addr is None:
        raise SocksError("truncated SOCKS UDP header")
    host, port, end = addr
    return host, port, buf[end:]
