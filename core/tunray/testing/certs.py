"""Self-signed certificates for TLS tests, made fresh with ``cryptography``.

``make_cert(tmp_path)`` writes ``server.crt``/``server.key`` (ECDSA P-256, CA:true, valid a
week, SANs for the given names and IPs) and returns the PEMs, the DER and its SHA-256,
ready for ``tlsSettings.pinnedPeerCertSha256`` or a server's certificate files.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class SelfSigned:
    cert_pem: str
    key_pem: str
    der: bytes
    cert_file: Path
    key_file: Path

    @property
    def sha256_hex(self) -> str:
        return hashlib.sha256(self.der).hexdigest()


def make_cert(
    directory: Path,
    names: tuple[str, ...] = ("vless.test", "localhost"),
    ips: tuple[str, ...] = ("127.0.0.1", "::1"),
    stem: str = "server",
) -> SelfSigned:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "test")])
    now = datetime.datetime.now(datetime.UTC)
    san: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    san += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    cert_file = directory / f"{stem}.crt"
    key_file = directory / f"{stem}.key"
    cert_file.write_text(cert_pem)
    key_file.write_text(key_pem)
    return SelfSigned(cert_pem, key_pem, cert.public_bytes(serialization.Encoding.DER), cert_file, key_file)
