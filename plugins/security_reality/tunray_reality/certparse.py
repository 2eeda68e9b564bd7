"""The two fields of an X.509 certificate REALITY needs, read straight from the DER.

REALITY's throw-away certificate has serial number 0, which ``cryptography``'s X.509
loader deprecates (and will refuse), so the leaf is walked here instead::

    Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serial,
        signature, issuer, validity, subject, subjectPublicKeyInfo SEQUENCE, ... },
        signatureAlgorithm SEQUENCE, signatureValue BIT STRING }

The public key itself is then loaded by ``cryptography`` from the SubjectPublicKeyInfo.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import load_der_public_key

SEQUENCE, BIT_STRING, CONTEXT_0 = 0x30, 0x03, 0xA0


class CertificateError(ValueError):
    """Not a DER certificate this parser understands."""


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER element at *pos*."""
    if pos + 2 > len(data):
        raise CertificateError("truncated DER")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise CertificateError("bad DER length")
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise CertificateError("truncated DER")
    return tag, pos, pos + length


@dataclass(frozen=True, slots=True)
class LeafFields:
    spki: bytes  # SubjectPublicKeyInfo, DER
    signature: bytes  # signatureValue without the unused-bits byte

    def public_key(self) -> PublicKeyTypes:
        try:
            return load_der_public_key(self.spki)
        except (ValueError, TypeError) as exc:
            raise CertificateError(f"unusable public key: {exc}") from None


def leaf_fields(der: bytes) -> LeafFields:
    tag, start, end = _tlv(der, 0)
    if tag != SEQUENCE:
        raise CertificateError("not a certificate")
    tag, tbs_start, tbs_end = _tlv(der, start)
    if tag != SEQUENCE:
        raise CertificateError("no tbsCertificate")
    pos = tbs_start
    if der[pos] == CONTEXT_0:
        pos = _tlv(der, pos)[2]
    for _ in range(5):  # serial, signature, issuer, validity, subject
        pos = _tlv(der, pos)[2]
    tag, _, spki_end = _tlv(der, pos)
    if tag != SEQUENCE:
        raise CertificateError("no subjectPublicKeyInfo")
    spki = der[pos:spki_end]
    _, _, alg_end = _tlv(der, tbs_end)
    tag, sig_start, sig_end = _tlv(der, alg_end)
    if tag != BIT_STRING or sig_end != end or sig_start >= sig_end:
        raise CertificateError("no signatureValue")
    return LeafFields(spki, der[sig_start + 1 : sig_end])
