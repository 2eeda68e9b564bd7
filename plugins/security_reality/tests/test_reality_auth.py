"""REALITY's derivations, step by step, against Xray's key vector and a server-side re-derivation.

The server side here is written from REALITY's ``tls.go`` independently of the client
code paths it checks: it finds the X25519 share by parsing the ClientHello, derives
the key from the *private* key, zeroes the session_id and opens it.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import struct

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID
from tunray_reality.auth import (
    CLIENT_VERSION,
    certificate_is_reality,
    derive_auth_key,
    open_session_id,
    seal_hello,
    session_id_plaintext,
)
from tunray_reality.hello import build_client_hello
from tunray_reality.settings import decode_key

# testing/scenarios/vless_test.go in Xray-core
XRAY_PRIVATE = "aGSYystUbf59_9_6LKRxD27rmSW_-2_nyd9YG_Gwbks"
XRAY_PUBLIC = "E59WjnvZcQMu7tR7_BgyhycuEdBS-CtKxfImRCdAvFM"


def _server_private() -> X25519PrivateKey:
    raw = decode_key(XRAY_PRIVATE)
    assert raw is not None
    return X25519PrivateKey.from_private_bytes(raw)


def test_xray_key_vector() -> None:
    pub = _server_private().public_key().public_bytes_raw()
    assert pub == decode_key(XRAY_PUBLIC)


def _key_share(hello: bytes) -> bytes:
    """The X25519 key share, found the way a server finds it (walk to extension 0x0033)."""
    pos = 4 + 2 + 32
    pos += 1 + hello[pos]
    pos += 2 + int.from_bytes(hello[pos : pos + 2], "big")
    pos += 1 + hello[pos]
    end = pos + 2 + int.from_bytes(hello[pos : pos + 2], "big")
    pos += 2
    while pos < end:
        code = int.from_bytes(hello[pos : pos + 2], "big")
        n = int.from_bytes(hello[pos + 2 : pos + 4], "big")
        body = hello[pos + 4 : pos + 4 + n]
        if code == 0x0033:
            shares = body[2:]
            i = 0
            while i < len(shares):
                group = int.from_bytes(shares[i : i + 2], "big")
                m = int.from_bytes(shares[i + 2 : i + 4], "big")
                if group == 0x001D:
                    return shares[i + 4 : i + 4 + m]
                i += 4 + m
        pos += 4 + n
    raise AssertionError("no X25519 share")


def test_session_id_opens_on_the_server_side() -> None:
    client_key = X25519PrivateKey.generate()
    hello = build_client_hello("decoy.test", client_key.public_key().public_bytes_raw())
    server_pub = X25519PublicKey.from_public_bytes(decode_key(XRAY_PUBLIC) or b"")
    auth = derive_auth_key(client_key.exchange(server_pub), hello.random)
    plain = session_id_plaintext(CLIENT_VERSION, 1_700_000_000, bytes.fromhex("0123456789abcdef"))
    sealed = seal_hello(hello.raw, hello.random, auth, plain)
    assert len(sealed) == len(hello.raw) and sealed[:39] == hello.raw[:39] and sealed[71:] == hello.raw[71:]

    # The server's view: X25519(private, client share), HKDF, AES-GCM open with the zeroed hello as AAD.
    shared = _server_private().exchange(X25519PublicKey.from_public_bytes(_key_share(sealed)))
    server_auth = HKDF(hashes.SHA256(), 32, sealed[6:26], b"REALITY").derive(shared)
    assert server_auth == auth
    zeroed = sealed[:39] + bytes(32) + sealed[71:]
    opened = AESGCM(server_auth).decrypt(sealed[26:38], sealed[39:71], zeroed)
    assert opened == bytes([26, 7, 28, 0]) + struct.pack("!I", 1_700_000_000) + bytes.fromhex("0123456789abcdef")
    assert open_session_id(sealed, hello.random, auth) == opened


def test_session_id_is_bound_to_the_whole_hello() -> None:
    client_key = X25519PrivateKey.generate()
    hello = build_client_hello("decoy.test", client_key.public_key().public_bytes_raw())
    auth = derive_auth_key(client_key.exchange(_server_private().public_key()), hello.random)
    sealed = bytearray(seal_hello(hello.raw, hello.random, auth, bytes(16)))
    sealed[-1] ^= 1  # any change to the hello (here: the last extension byte) breaks the tag
    with pytest.raises(InvalidTag):
        open_session_id(bytes(sealed), hello.random, auth)


def test_short_id_is_zero_padded_on_the_right() -> None:
    assert session_id_plaintext((1, 2, 3), 5, bytes.fromhex("abcd"))[8:] == bytes.fromhex("abcd000000000000")
    assert session_id_plaintext((1, 2, 3), 5, b"")[8:] == bytes(8)


def _reality_like_certificate(auth_key: bytes, serial: int = 0) -> tuple[bytes, ed25519.Ed25519PrivateKey]:
    """What REALITY's server sends: an Ed25519 self-signed template whose last 64 bytes are replaced."""
    key = ed25519.Ed25519PrivateKey.generate()
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial or 1)
        .not_valid_before(now)
        .not_valid_after(now)
        .sign(key, None)
        .public_bytes(serialization.Encoding.DER)
    )
    pub = key.public_key().public_bytes_raw()
    return cert[:-64] + hmac.new(auth_key, pub, hashlib.sha512).digest(), key


def test_certificate_check_accepts_only_the_hmac_signature() -> None:
    auth = bytes(range(32))
    cert, _ = _reality_like_certificate(auth)
    assert certificate_is_reality(auth, cert)
    assert not certificate_is_reality(bytes(32), cert)  # another auth key (wrong publicKey/shortId)
    tampered = cert[:-1] + bytes([cert[-1] ^ 1])
    assert not certificate_is_reality(auth, tampered)
    assert not certificate_is_reality(auth, b"\x30\x03\x02\x01\x00")  # garbage


def test_certificate_check_refuses_a_real_certificate() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "decoy.test")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    assert not certificate_is_reality(bytes(32), cert)
