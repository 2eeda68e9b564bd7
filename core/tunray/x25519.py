"""``tunray x25519``: an X25519 key pair for REALITY, printed as Xray 24 prints it.

    Private key: <32 bytes, unpadded base64url>
    Public key: <32 bytes, unpadded base64url>

``-i PRIVATE`` derives the public key of a given private key (printed back as given);
``--std-encoding`` uses standard padded base64 instead.  A new private key is clamped
(RFC 7748) before printing, as Xray does.  (Xray 25+ prints ``PrivateKey:`` /
``Password (PublicKey):`` / ``Hash32:`` instead; both tools read either key spelling.)
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey


def _encode(raw: bytes, std: bool) -> str:
    return base64.b64encode(raw).decode() if std else base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(text: str, std: bool) -> bytes:
    try:
        if std:
            return base64.b64decode(text, validate=True)
        if "=" in text or "+" in text or "/" in text:
            raise ValueError(text)
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError(f"illegal base64 data: {text!r}") from None


def new_private_key() -> bytes:
    key = bytearray(os.urandom(32))
    key[0] &= 248
    key[31] &= 127
    key[31] |= 64
    return bytes(key)


def public_key(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def render(private_text: str | None, std: bool = False) -> str:
    """The command's output; ``ValueError`` with a one-line message for a bad ``-i``."""
    if private_text:
        private = _decode(private_text, std)
        if len(private) != 32:
            raise ValueError("invalid length of X25519 private key")
    else:
        private = new_private_key()
    return f"Private key: {_encode(private, std)}\nPublic key: {_encode(public_key(private), std)}"
