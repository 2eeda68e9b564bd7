"""TLS 1.3 key schedule and record protection (RFC 8446 §7), on ``cryptography``.

Theory of operation.  A :class:`Suite` names the AEAD and hash of a TLS 1.3 cipher
suite.  :class:`KeySchedule` walks early → handshake → master secret as the
transcript grows; :class:`RecordCipher` seals and opens one direction's records with
the per-record nonce ``iv XOR seq`` (seq starts at 0 for every new key)::

    TLSInnerPlaintext = content || ContentType(1) || zeros
    TLSCiphertext     = 17 03 03 | length(2) | AEAD(inner), AAD = those 5 bytes
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from tunray_reality.errors import TlsAlert

APPLICATION_DATA = 23
MAX_PLAINTEXT = 1 << 14
MAX_CIPHERTEXT = MAX_PLAINTEXT + 256


@dataclass(frozen=True, slots=True)
class Suite:
    code: int
    name: str
    key_len: int
    hash_name: str
    aead: Any  # the cryptography AEAD class

    @property
    def hash_len(self) -> int:
        return 48 if self.hash_name == "sha384" else 32

    def hash_algo(self) -> hashes.HashAlgorithm:
        return hashes.SHA384() if self.hash_name == "sha384" else hashes.SHA256()


SUITES = {
    0x1301: Suite(0x1301, "TLS_AES_128_GCM_SHA256", 16, "sha256", AESGCM),
    0x1302: Suite(0x1302, "TLS_AES_256_GCM_SHA384", 32, "sha384", AESGCM),
    0x1303: Suite(0x1303, "TLS_CHACHA20_POLY1305_SHA256", 32, "sha256", ChaCha20Poly1305),
}


def hkdf_extract(suite: Suite, salt: bytes, ikm: bytes) -> bytes:
    return hmac.digest(salt or bytes(suite.hash_len), ikm, suite.hash_name)


def expand_label(suite: Suite, secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    """HKDF-Expand-Label: ``HkdfLabel = length(2) | len+"tls13 "+label | len+context``.

    Every length TLS 1.3 asks for is at most one hash output, so HKDF-Expand is the
    single block ``HMAC(secret, info | 0x01)`` (RFC 5869 §2.3), computed directly:
    about 4x cheaper than building an ``HKDFExpand`` object each time.
    """
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + bytes([len(context)]) + context
    if length <= suite.hash_len:
        return hmac.digest(secret, info + b"\x01", suite.hash_name)[:length]
    return HKDFExpand(suite.hash_algo(), length, info).derive(secret)


class KeySchedule:
    """The secrets of one handshake; *transcript* hashes are passed in by the caller."""

    __slots__ = ("_master", "client_hs", "server_hs", "suite")

    def __init__(self, suite: Suite, shared_secret: bytes, hello_hash: bytes) -> None:
        self.suite = suite
        empty = hashlib.new(suite.hash_name, b"").digest()
        early = hkdf_extract(suite, b"", bytes(suite.hash_len))
        derived = expand_label(suite, early, b"derived", empty, suite.hash_len)
        handshake = hkdf_extract(suite, derived, shared_secret)
        self.client_hs = expand_label(suite, handshake, b"c hs traffic", hello_hash, suite.hash_len)
        self.server_hs = expand_label(suite, handshake, b"s hs traffic", hello_hash, suite.hash_len)
        derived = expand_label(suite, handshake, b"derived", empty, suite.hash_len)
        self._master = hkdf_extract(suite, derived, bytes(suite.hash_len))

    def application(self, handshake_hash: bytes) -> tuple[bytes, bytes]:
        """(client, server) application traffic secrets after the server Finished."""
        s = self.suite
        return (
            expand_label(s, self._master, b"c ap traffic", handshake_hash, s.hash_len),
            expand_label(s, self._master, b"s ap traffic", handshake_hash, s.hash_len),
        )

    def finished(self, base_secret: bytes, transcript_hash: bytes) -> bytes:
        key = expand_label(self.suite, base_secret, b"finished", b"", self.suite.hash_len)
        return hmac.digest(key, transcript_hash, self.suite.hash_name)


def next_secret(suite: Suite, secret: bytes) -> bytes:
    """The traffic secret after a KeyUpdate (RFC 8446 §7.2)."""
    return expand_label(suite, secret, b"traffic upd", b"", suite.hash_len)


class RecordCipher:
    """One direction's record protection under one traffic secret."""

    __slots__ = ("_aead", "_iv", "_seq", "secret", "suite")

    def __init__(self, suite: Suite, secret: bytes) -> None:
        self.suite = suite
        self.secret = secret
        self._aead = suite.aead(expand_label(suite, secret, b"key", b"", suite.key_len))
        self._iv = int.from_bytes(expand_label(suite, secret, b"iv", b"", 12), "big")
        self._seq = 0

    def _nonce(self) -> bytes:
        nonce = (self._iv ^ self._seq).to_bytes(12, "big")
        self._seq += 1
        return nonce

    def seal(self, content_type: int, data: bytes | memoryview) -> bytes:
        """One whole record carrying *data* (≤ 2^14 bytes) as *content_type*."""
        inner = bytes(data) + bytes([content_type])
        header = b"\x17\x03\x03" + (len(inner) + 16).to_bytes(2, "big")
        sealed: bytes = self._aead.encrypt(self._nonce(), inner, header)
        return header + sealed

    def seal_many(self, content_type: int, data: bytes | bytearray | memoryview) -> bytes:
        view = memoryview(data)
        return b"".join(self.seal(content_type, view[i : i + MAX_PLAINTEXT]) for i in range(0, len(view), MAX_PLAINTEXT))

    def open(self, header: bytes, body: bytes) -> tuple[int, bytes]:
        """(content type, content) of one protected record; :class:`TlsAlert` if it does not verify."""
        try:
            inner = self._aead.decrypt(self._nonce(), body, header)
        except Exception:  # cryptography raises InvalidTag
            raise TlsAlert(20, "bad_record_mac: a record from the server does not decrypt") from None
        end = len(inner)
        while end and inner[end - 1] == 0:
            end -= 1
        if not end:
            raise TlsAlert(10, "unexpected_message: a record with no content type")
        return inner[end - 1], inner[: end - 1]
