"""Xray's "port then address" encoding, shared by the VLESS header and Mux.Cool/XUDP.

Layout (``common/protocol/address.go`` with ``PortThenAddress``)::

    port (2, big-endian) | type (1) | address
        type 01: IPv4, 4 bytes
        type 02: domain, 1 length byte + that many bytes (at most 255)
        type 03: IPv6, 16 bytes

Decoding follows Xray: a domain that starts with ``[`` or a digit and parses as an IP
becomes that IP; an IPv4-mapped IPv6 address becomes IPv4; any other domain must be
made of ``[0-9A-Za-z._-]`` only.
"""

from __future__ import annotations

import ipaddress
import re

from tunray.net.address import Host

from tunray_vless.codec.errors import CodecError

ATYPE_IPV4 = 1
ATYPE_DOMAIN = 2
ATYPE_IPV6 = 3

_VALID_DOMAIN = re.compile(rb"[0-9A-Za-z._-]+")
_IP_PREFIX = frozenset(b"[0123456789")


def encode_address(host: Host, port: int) -> bytes:
    """Encode ``port | type | address``; raises :class:`CodecError` for what cannot be sent."""
    if not 0 <= port <= 0xFFFF:
        raise CodecError(f"port {port} out of range")
    head = port.to_bytes(2, "big")
    if isinstance(host, ipaddress.IPv4Address):
        return head + b"\x01" + host.packed
    if isinstance(host, ipaddress.IPv6Address):
        return head + b"\x03" + host.packed
    raw = host.encode()
    if not raw:
        raise CodecError("empty domain")
    if len(raw) > 255:
        raise CodecError(f"domain of {len(raw)} bytes is longer than 255")
    return head + bytes((ATYPE_DOMAIN, len(raw))) + raw


def _unmap(ip: ipaddress.IPv6Address) -> Host:
    mapped = ip.ipv4_mapped
    return mapped if mapped is not None else ip


def _domain_or_ip(raw: bytes) -> Host:
    if not raw:
        raise CodecError("empty domain")
    if raw[0] in _IP_PREFIX:
        text = raw.decode("latin-1")
        if not (text[0].isalnum() and text[-1].isalnum()):
            text = text.strip()  # Xray trims spaces around something that may be an IP
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        try:
            ip = None if "%" in text else ipaddress.ip_address(text)  # Go's ParseIP takes no zone
        except ValueError:
            ip = None
        if isinstance(ip, ipaddress.IPv6Address):
            return _unmap(ip)
        if ip is not None:
            return ip
    if _VALID_DOMAIN.fullmatch(raw) is None:
        raise CodecError(f"invalid domain name {raw[:64]!r}")
    return raw.decode("ascii")


def decode_address(data: bytes | bytearray | memoryview, pos: int = 0) -> tuple[Host, int, int] | None:
    """Decode at ``data[pos:]``: ``(host, port, end)``, or ``None`` if more bytes are needed.

    Raises :class:`CodecError` for an unknown address type or an invalid domain.
    """
    size = len(data)
    if size < pos + 3:
        return None
    port = (data[pos] << 8) | data[pos + 1]
    atype = data[pos + 2]
    start = pos + 3
    if atype == ATYPE_IPV4:
        end = start + 4
        if size < end:
            return None
        return ipaddress.IPv4Address(bytes(data[start:end])), port, end
    if atype == ATYPE_IPV6:
        end = start + 16
        if size < end:
            return None
        return _unmap(ipaddress.IPv6Address(bytes(data[start:end]))), port, end
    if atype == ATYPE_DOMAIN:
        if size < start + 1:
            return None
        end = start + 1 + data[start]
        if size < end:
            return None
        return _domain_or_ip(bytes(data[start + 1 : end])), port, end
    raise CodecError(f"unknown address type {atype}")
