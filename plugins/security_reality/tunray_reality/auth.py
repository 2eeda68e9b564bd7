"""REALITY's authentication, client side: the sealed session_id and the certificate check.

Byte layout (Xray ``transport/internet/reality/reality.go``, server ``XTLS/REALITY`` ``tls.go``)::

    shared   = X25519(our key-share private key, server publicKey)
    auth_key = HKDF-SHA256(secret=shared, salt=client_random[0:20], info="REALITY"), 32 bytes
    plain    = version_x | version_y | version_z | 00 | unix_time(4, BE) | shortId(8)
    session_id = AES-256-GCM(auth_key).seal(nonce=client_random[20:32], plain,
                                            aad=ClientHello handshake message with session_id zeroed)
               = 16-byte ciphertext | 16-byte tag, written at offset 39 of the message

The server answers with a throw-away Ed25519 certificate whose signature field (its
last 64 bytes) is ``HMAC-SHA512(auth_key, ed25519 public key)``.  Anything else means
the connection went to the decoy ("target") site: the client must fail closed.
(Xray ≤ 24 chose ChaCha20-Poly1305 for the seal when the hello's first cipher suite was
not AES-GCM; Chrome's is, and later Xray always uses AES-GCM.)
"""

from __future__ import annotations

import hmac
import struct

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tunray_reality.certparse import CertificateError, leaf_fields
from tunray_reality.hello import SESSION_ID_OFFSET

#: The Xray version this client reports in the session_id.  REALITY servers may require
#: a minimum (current Xray defaults ``minClientVer`` to 26.3.27); this is Xray's own at the
#: time of writing, so such servers accept it.
CLIENT_VERSION = (26, 7, 28)


def derive_auth_key(shared: bytes, client_random: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, client_random[:20], b"REALITY").derive(shared)


def session_id_plaintext(version: tuple[int, int, int], unix_time: int, short_id: bytes) -> bytes:
    """The 16 bytes REALITY seals: version(3) | 00 | time(4) | shortId(8)."""
    return bytes(version) + b"\x00" + struct.pack("!I", unix_time & 0xFFFFFFFF) + short_id.ljust(8, b"\x00")[:8]


def seal_hello(hello_raw: bytes, client_random: bytes, auth_key: bytes, plaintext: bytes) -> bytes:
    """*hello_raw* (session_id zeroed) with the sealed session_id in place."""
    start, end = SESSION_ID_OFFSET, SESSION_ID_OFFSET + 32
    if hello_raw[start - 1] != 32 or hello_raw[start:end] != bytes(32):
        raise ValueError("ClientHello must carry a zeroed 32-byte session_id at offset 39")
    sealed = AESGCM(auth_key).encrypt(client_random[20:32], plaintext, hello_raw)
    return hello_raw[:start] + sealed + hello_raw[end:]


def open_session_id(hello_raw: bytes, client_random: bytes, auth_key: bytes) -> bytes:
    """What a REALITY server does: the 16-byte plaintext (raises ``InvalidTag`` if not ours)."""
    start, end = SESSION_ID_OFFSET, SESSION_ID_OFFSET + 32
    zeroed = hello_raw[:start] + bytes(32) + hello_raw[end:]
    return AESGCM(auth_key).decrypt(client_random[20:32], hello_raw[start:end], zeroed)


def certificate_is_reality(auth_key: bytes, der: bytes) -> bool:
    """True iff the leaf is Ed25519 and its signature is ``HMAC-SHA512(auth_key, public key)``."""
    try:
        fields = leaf_fields(der)
        key = fields.public_key()
    except CertificateError:
        return False
    signature = fields.signature
    if not isinstance(key, ed25519.Ed25519PublicKey):
        return False
    pub = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hmac.compare_digest(hmac.new(auth_key, pub, "sha512").digest(), signature)
