"""Build first flights for tests: TLS ClientHellos, TLS records, protected QUIC client Initials.

Test support, not used on the data path.  It lets sniffer tests (and the dispatcher's sniffing
tests) produce ClientHellos split into any records, CRYPTO frames and datagrams they need.
The QUIC side is the inverse of :mod:`tunray.sniff.quic`: frames are encrypted with the client
Initial keys and then header-protected (RFC 9001 §5).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tunray.sniff.quic_crypto import VERSION_1, client_initial_keys


def _vec(length_bytes: int, data: bytes) -> bytes:
    return len(data).to_bytes(length_bytes, "big") + data


def server_name_extension(*names: bytes, name_type: int = 0) -> tuple[int, bytes]:
    """A ``server_name`` extension (type 0) listing *names* with *name_type*."""
    entries = b"".join(bytes([name_type]) + _vec(2, n) for n in names)
    return 0, _vec(2, entries)


def client_hello(
    server_name: str | None,
    *,
    extensions: Sequence[tuple[int, bytes]] = (),
    session_id: bytes = b"\x11" * 32,
    cipher_suites: Sequence[int] = (0x1301, 0x1302, 0x1303, 0xC02B),
    padding: int = 0,
) -> bytes:
    """A ClientHello handshake message (with its 4-byte header).

    *server_name* becomes the first extension unless it is ``None``; *extensions* follow, then a
    ``padding`` extension (type 21) of *padding* zero bytes if *padding* > 0.
    """
    exts = list(extensions)
    if server_name is not None:
        exts.insert(0, server_name_extension(server_name.encode()))
    if padding:
        exts.append((21, bytes(padding)))
    body = (
        b"\x03\x03"
        + os.urandom(32)
        + _vec(1, session_id)
        + _vec(2, b"".join(s.to_bytes(2, "big") for s in cipher_suites))
        + b"\x01\x00"
        + _vec(2, b"".join(t.to_bytes(2, "big") + _vec(2, d) for t, d in exts))
    )
    return b"\x01" + _vec(3, body)


def tls_records(message: bytes, sizes: Iterable[int] = ()) -> bytes:
    """Wrap a handshake message into TLS handshake records of the given fragment *sizes*
    (the remainder goes into a last record)."""
    out = bytearray()
    pos = 0
    for size in sizes:
        if pos >= len(message):
            break
        out += b"\x16\x03\x01" + _vec(2, message[pos : pos + size])
        pos += size
    if pos < len(message):
        out += b"\x16\x03\x01" + _vec(2, message[pos:])
    return bytes(out)


def varint(value: int) -> bytes:
    """QUIC variable-length integer (RFC 9000 §16), shortest form."""
    for size, prefix in ((1, 0x00), (2, 0x40), (4, 0x80), (8, 0xC0)):
        if value < 1 << (8 * size - 2):
            encoded = bytearray(value.to_bytes(size, "big"))
            encoded[0] |= prefix
            return bytes(encoded)
    raise ValueError("varint too large")


def crypto_frame(offset: int, data: bytes) -> bytes:
    return b"\x06" + varint(offset) + varint(len(data)) + data


def quic_initial(
    frames: bytes,
    *,
    dcid: bytes,
    scid: bytes = b"",
    packet_number: int = 0,
    pn_len: int = 2,
    version: int = VERSION_1,
    token: bytes = b"",
    pad_to: int = 1200,
) -> bytes:
    """One protected client Initial packet carrying *frames*, PADDING added to reach *pad_to*."""
    keys = client_initial_keys(version, dcid)
    prefix_len = 1 + 4 + 1 + len(dcid) + 1 + len(scid) + len(varint(len(token))) + len(token)
    payload = frames + bytes(max(0, 4 - pn_len - len(frames)))  # room for the HP sample
    # Length covers packet number + payload + 16-byte tag; use a 2-byte varint for it.
    overhead = prefix_len + 2 + pn_len + 16
    payload += bytes(max(0, pad_to - overhead - len(payload)))
    length = pn_len + len(payload) + 16
    if length >= 1 << 14:
        raise ValueError("packet too long for a 2-byte Length")
    first = 0xC0 | (pn_len - 1)  # long header, fixed bit, Initial (type 0)
    header = (
        bytes([first])
        + version.to_bytes(4, "big")
        + _vec(1, dcid)
        + _vec(1, scid)
        + varint(len(token))
        + token
        + (0x4000 | length).to_bytes(2, "big")
        + packet_number.to_bytes(pn_len, "big")
    )
    nonce = (int.from_bytes(keys.iv, "big") ^ packet_number).to_bytes(12, "big")
    ciphertext = AESGCM(keys.key).encrypt(nonce, payload, header)
    pn_offset = len(header) - pn_len
    packet = bytearray(header + ciphertext)
    mask = keys.header_mask(bytes(packet[pn_offset + 4 : pn_offset + 20]))
    packet[0] ^= mask[0] & 0x0F
    for i in range(pn_len):
        packet[pn_offset + i] ^= mask[1 + i]
    return bytes(packet)
