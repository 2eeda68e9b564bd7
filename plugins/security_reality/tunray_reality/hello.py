"""A Chrome-shaped TLS ClientHello (the wire bytes a REALITY client must send).

Layout (RFC 8446 §4.1.2), as the handshake message (no 5-byte record header)::

    01 | length(3) | legacy_version 03 03 | random(32) | 20 | session_id(32)   <- offset 39..71
       | cipher_suites(2+n) | 01 00 | extensions(2+n)

What is matched to current desktop Chrome (BoringSSL): GREASE values (RFC 8701) in
cipher suites, supported_groups, key_share, supported_versions and as the first and
last extension (two distinct values); Chrome's cipher-suite list and order; its
extension set (SNI, extended_master_secret, renegotiation_info, supported_groups,
ec_point_formats, session_ticket, ALPN h2/http/1.1, status_request,
signature_algorithms, signed_certificate_timestamp, key_share, psk_key_exchange_modes,
supported_versions, compress_certificate brotli, application_settings h2, a GREASE
encrypted_client_hello) with the non-GREASE extensions in a random order per
connection, as Chrome permutes them since version 110; a 32-byte session_id.

What is not matched: Chrome ≥ 131 offers an X25519MLKEM768 key share first; this
hello offers X25519 only (as Chrome did before post-quantum key agreement), because
REALITY servers before Xray 25 only read a plain X25519 share and a target server
must answer with X25519 for REALITY to complete.  Nothing here pads to BoringSSL's
512-byte rule (the ECH GREASE already makes the hello longer than 512 bytes).
"""

from __future__ import annotations

import os
import random
import struct
from dataclasses import dataclass

GREASE = tuple(0x0A0A + 0x1010 * i for i in range(16))
CHROME_SUITES = (0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035)
CHROME_SIGALGS = (0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601)
X25519 = 0x001D
SESSION_ID_OFFSET = 39


def _u16(v: int) -> bytes:
    return struct.pack("!H", v)


def _vec16(data: bytes) -> bytes:
    return _u16(len(data)) + data


def _vec8(data: bytes) -> bytes:
    return bytes([len(data)]) + data


def _ext(code: int, body: bytes) -> bytes:
    return _u16(code) + _vec16(body)


@dataclass(frozen=True, slots=True)
class ClientHello:
    """The handshake message (session_id all zeros) and what the handshake needs of it."""

    raw: bytes
    random: bytes
    cipher_suites: tuple[int, ...]


def build_client_hello(
    server_name: str,
    x25519_public: bytes,
    alpn: tuple[str, ...] = ("h2", "http/1.1"),
    rng: random.Random | None = None,
    random_bytes: bytes | None = None,
) -> ClientHello:
    """A Chrome-shaped ClientHello offering TLS 1.3 with one X25519 key share."""
    r = rng or random.Random(os.urandom(16))  # seeded per hello: SystemRandom costs a syscall per draw
    g_suite, g_group, g_version, g_ext1 = (r.choice(GREASE) for _ in range(4))
    g_ext2 = r.choice([g for g in GREASE if g != g_ext1])
    client_random = random_bytes if random_bytes is not None else os.urandom(32)
    suites = (g_suite, *CHROME_SUITES)

    middle: list[bytes] = []
    if server_name:
        name = server_name.encode("idna") if not server_name.isascii() else server_name.encode()
        middle.append(_ext(0x0000, _vec16(b"\x00" + _vec16(name))))
    middle.append(_ext(0x0017, b""))  # extended_master_secret
    middle.append(_ext(0xFF01, b"\x00"))  # renegotiation_info
    middle.append(_ext(0x000A, _vec16(b"".join(_u16(g) for g in (g_group, X25519, 0x0017, 0x0018)))))
    middle.append(_ext(0x000B, b"\x01\x00"))  # ec_point_formats: uncompressed
    middle.append(_ext(0x0023, b""))  # session_ticket
    if alpn:
        middle.append(_ext(0x0010, _vec16(b"".join(_vec8(p.encode()) for p in alpn))))
    middle.append(_ext(0x0005, b"\x01\x00\x00\x00\x00"))  # status_request: OCSP
    middle.append(_ext(0x000D, _vec16(b"".join(_u16(a) for a in CHROME_SIGALGS))))
    middle.append(_ext(0x0012, b""))  # signed_certificate_timestamp
    shares = _u16(g_group) + _vec16(b"\x00") + _u16(X25519) + _vec16(x25519_public)
    middle.append(_ext(0x0033, _vec16(shares)))  # key_share
    middle.append(_ext(0x002D, b"\x01\x01"))  # psk_key_exchange_modes: psk_dhe_ke
    middle.append(_ext(0x002B, _vec8(_u16(g_version) + b"\x03\x04\x03\x03")))  # supported_versions
    middle.append(_ext(0x001B, b"\x02\x00\x02"))  # compress_certificate: brotli
    if "h2" in alpn:
        middle.append(_ext(0x44CD, _vec16(_vec8(b"h2"))))  # application_settings (ALPS)
    ech_payload = os.urandom(r.choice((144, 176, 208, 240)))
    ech = b"\x00\x00\x01\x00\x01" + bytes([r.randrange(256)]) + _vec16(os.urandom(32)) + _vec16(ech_payload)
    middle.append(_ext(0xFE0D, ech))  # encrypted_client_hello (GREASE)
    r.shuffle(middle)
    extensions = _ext(g_ext1, b"") + b"".join(middle) + _ext(g_ext2, b"\x00")

    body = (
        b"\x03\x03"
        + client_random
        + _vec8(bytes(32))
        + _vec16(b"".join(_u16(s) for s in suites))
        + b"\x01\x00"
        + _vec16(extensions)
    )
    raw = b"\x01" + len(body).to_bytes(3, "big") + body
    return ClientHello(raw, client_random, suites)
