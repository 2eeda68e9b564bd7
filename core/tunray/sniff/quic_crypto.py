"""QUIC Initial packet protection for the client direction (RFC 9001 §5, draft-29 salt too).

Initial keys are derived from the client's Destination Connection ID and a per-version salt,
so anyone on the path can read a client Initial: that is what the QUIC sniffer relies on.

``cryptography`` is imported on the first decryption, not with this module: its Rust
extension maps ~7 MiB and a config without QUIC sniffing (or TLS, REALITY) never needs it.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers import CipherContext

VERSION_1 = 0x00000001
VERSION_DRAFT29 = 0xFF00001D
INITIAL_SALTS: dict[int, bytes] = {
    VERSION_1: bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"),
    VERSION_DRAFT29: bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899"),
}


def hkdf_expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """TLS 1.3 HKDF-Expand-Label with SHA-256 and an empty context, for ``length <= 32``."""
    # struct { uint16 length; opaque label<7..255> = "tls13 " + Label;
    #          opaque context<0..255>; } HkdfLabel;                         (RFC 8446 §7.1)
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    return hmac.digest(secret, info + b"\x01", hashlib.sha256)[:length]  # T(1) of HKDF-Expand


@dataclass(frozen=True, slots=True)
class InitialKeys:
    """Client Initial keys: AES-128-GCM packet key and IV, AES-128 header-protection key."""

    key: bytes
    iv: bytes
    hp: bytes

    def header_mask(self, sample: bytes) -> bytes:
        """AES-ECB of the 16-byte ciphertext sample (RFC 9001 §5.4.3)."""
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        encryptor: CipherContext = Cipher(algorithms.AES(self.hp), modes.ECB()).encryptor()
        return encryptor.update(sample)

    def open(self, packet_number: int, header: bytes, ciphertext: bytes) -> bytes | None:
        """Decrypt a payload; ``None`` if authentication fails."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        nonce = (int.from_bytes(self.iv, "big") ^ packet_number).to_bytes(12, "big")
        try:
            return AESGCM(self.key).decrypt(nonce, ciphertext, header)
        except (InvalidTag, ValueError):
            return None


@lru_cache(maxsize=256)
def client_initial_keys(version: int, dcid: bytes) -> InitialKeys:
    """Derive the client Initial keys for a supported *version* (a key of ``INITIAL_SALTS``)."""
    initial_secret = hmac.digest(INITIAL_SALTS[version], dcid, hashlib.sha256)  # HKDF-Extract
    secret = hkdf_expand_label(initial_secret, b"client in", 32)
    return InitialKeys(
        key=hkdf_expand_label(secret, b"quic key", 16),
        iv=hkdf_expand_label(secret, b"quic iv", 12),
        hp=hkdf_expand_label(secret, b"quic hp", 16),
    )
