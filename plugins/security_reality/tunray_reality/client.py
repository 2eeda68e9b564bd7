"""A sans-IO TLS 1.3 client (RFC 8446), just enough for REALITY: no I/O, no clock.

Theory of operation.  The caller builds the ClientHello (:mod:`tunray_reality.hello`,
possibly patched by REALITY) and hands its bytes and the X25519 key of its key share
to :class:`Tls13Client`.  It then ``feed``\\s bytes from the server and calls
``next_event`` until it returns ``None`` (more bytes needed); bytes to send collect in
``data_to_send``.  Each ``next_event`` consumes **at most one record**, so a caller
that stops after an :class:`AppData` knows that ``unprocessed()`` holds exactly the
bytes received after that record (XTLS Vision's raw switch relies on it).

The handshake is a table ``{(state, message type): handler}``; a message not in the
table for the current state is an ``unexpected_message`` error.  Certificates are
judged by the ``verify_certificate`` callback (REALITY's HMAC check); the
CertificateVerify signature and the server Finished MAC are checked here.  Not
supported (an error, never silently skipped): HelloRetryRequest, client
certificates, PSK/0-RTT, compressed certificates.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from tunray_reality.certparse import CertificateError, leaf_fields
from tunray_reality.errors import TlsAlert, TlsError
from tunray_reality.hello import X25519
from tunray_reality.schedule import MAX_CIPHERTEXT, SUITES, KeySchedule, RecordCipher, Suite, next_secret

CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA = 20, 21, 22, 23
SERVER_HELLO, NEW_SESSION_TICKET, ENCRYPTED_EXTENSIONS = 2, 4, 8
CERTIFICATE, CERTIFICATE_REQUEST, CERTIFICATE_VERIFY, FINISHED, KEY_UPDATE = 11, 13, 15, 20, 24
HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")


@dataclass(frozen=True, slots=True)
class HandshakeDone:
    """The handshake finished; the client Finished is in ``data_to_send``."""


@dataclass(frozen=True, slots=True)
class AppData:
    data: bytes


@dataclass(frozen=True, slots=True)
class PeerClosed:
    """The server sent close_notify: a clean end of its direction."""


Event = HandshakeDone | AppData | PeerClosed


class State(Enum):
    WAIT_SH = auto()
    WAIT_EE = auto()
    WAIT_CERT = auto()
    WAIT_CV = auto()
    WAIT_FIN = auto()
    CONNECTED = auto()
    CLOSED = auto()


def _vec(data: bytes, pos: int, width: int) -> tuple[bytes, int]:
    if pos + width > len(data):
        raise TlsAlert(50, "decode_error: truncated vector")
    n = int.from_bytes(data[pos : pos + width], "big")
    end = pos + width + n
    if end > len(data):
        raise TlsAlert(50, "decode_error: truncated vector")
    return data[pos + width : end], end


def _extensions(block: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    pos = 0
    while pos < len(block):
        if pos + 4 > len(block):
            raise TlsAlert(50, "decode_error: truncated extension")
        code = int.from_bytes(block[pos : pos + 2], "big")
        body, pos = _vec(block, pos + 2, 2)
        out[code] = body
    return out


_CV_PREFIX = b" " * 64 + b"TLS 1.3, server CertificateVerify\x00"


def verify_signature(cert_der: bytes, scheme: int, signature: bytes, content: bytes) -> None:
    """Check a CertificateVerify signature by the leaf's key; :class:`TlsAlert` if wrong."""
    try:
        key = leaf_fields(cert_der).public_key()
    except CertificateError as exc:
        raise TlsAlert(42, f"bad_certificate: {exc}") from None
    try:
        if scheme == 0x0807 and isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, content)
        elif scheme in (0x0403, 0x0503, 0x0603) and isinstance(key, ec.EllipticCurvePublicKey):
            algo = {0x0403: hashes.SHA256(), 0x0503: hashes.SHA384(), 0x0603: hashes.SHA512()}[scheme]
            key.verify(signature, content, ec.ECDSA(algo))
        elif scheme in (0x0804, 0x0805, 0x0806) and isinstance(key, rsa.RSAPublicKey):
            algo2 = {0x0804: hashes.SHA256(), 0x0805: hashes.SHA384(), 0x0806: hashes.SHA512()}[scheme]
            key.verify(signature, content, padding.PSS(padding.MGF1(algo2), algo2.digest_size), algo2)
        else:
            raise TlsAlert(47, f"illegal_parameter: signature scheme 0x{scheme:04x} does not fit the certificate key")
    except InvalidSignature:
        raise TlsAlert(51, "decrypt_error: the server's CertificateVerify signature is wrong") from None


class Tls13Client:
    """See the module docstring."""

    __slots__ = (
        "_buf",
        "_eof",
        "_hs_buf",
        "_key",
        "_out",
        "_read",
        "_schedule",
        "_session_id",
        "_state",
        "_transcript",
        "_verify",
        "_write",
        "alpn",
        "certificates",
        "suite",
    )

    def __init__(
        self,
        hello_raw: bytes,
        key: X25519PrivateKey,
        verify_certificate: Callable[[list[bytes]], None],
    ) -> None:
        self._key = key
        self._verify = verify_certificate
        self._session_id = hello_raw[39:71]
        self._transcript = bytearray(hello_raw)
        self._state = State.WAIT_SH
        self._buf = bytearray()
        self._hs_buf = bytearray()
        self._out = bytearray(b"\x16\x03\x01" + len(hello_raw).to_bytes(2, "big") + hello_raw)
        self._eof = False
        self._read: RecordCipher | None = None
        self._write: RecordCipher | None = None
        self._schedule: KeySchedule | None = None
        self.suite: Suite | None = None
        self.alpn: str | None = None
        self.certificates: list[bytes] = []

    # -- I/O surface -------------------------------------------------------------------

    @property
    def handshake_complete(self) -> bool:
        return self._state in (State.CONNECTED, State.CLOSED)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def feed_eof(self) -> None:
        self._eof = True

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def unprocessed(self) -> bytes:
        """Bytes received and not yet consumed as records (taken: the buffer is emptied)."""
        out = bytes(self._buf)
        self._buf.clear()
        return out

    def seal(self, data: bytes | bytearray | memoryview) -> bytes:
        """Application data as records, ready to send."""
        if (self._state is not State.CONNECTED and self._state is not State.CLOSED) or self._write is None:
            raise TlsError("TLS: application data before the handshake completed")
        return self._write.seal_many(APPLICATION_DATA, data)

    def close_notify(self) -> bytes:
        if self._write is None:
            return b""
        return self._write.seal(ALERT, b"\x01\x00")

    # -- record layer ------------------------------------------------------------------

    def next_event(self) -> Event | None:
        """Process at most one record; ``None`` when a whole record has not arrived yet."""
        while True:
            buf = self._buf
            if len(buf) < 5:
                self._check_end(buf)
                return None
            length = (buf[3] << 8) | buf[4]
            if length > MAX_CIPHERTEXT:
                raise TlsAlert(22, "record_overflow: a record longer than TLS allows")
            if len(buf) < 5 + length:
                self._check_end(buf)
                return None
            rtype = buf[0]
            header = bytes(buf[:5])
            body = bytes(buf[5 : 5 + length])
            del buf[: 5 + length]
            event = self._record(rtype, header, body)
            if event is not None:
                return event

    def _check_end(self, buf: bytearray) -> None:
        if self._eof:
            if self._state is State.CLOSED:
                return
            if buf:
                raise TlsError("TLS: the connection ended inside a record")
            if self._state is not State.CONNECTED:
                raise TlsError("TLS: the server closed the connection during the handshake")
            raise TlsError("TLS: the server closed the connection without close_notify (truncated)")

    def _record(self, rtype: int, header: bytes, body: bytes) -> Event | None:
        if rtype == CHANGE_CIPHER_SPEC and not self.handshake_complete:
            if body != b"\x01":
                raise TlsAlert(10, "unexpected_message: malformed change_cipher_spec")
            return None
        if self._read is None:
            if rtype == ALERT:
                raise self._alert(body)
            if rtype != HANDSHAKE:
                raise TlsAlert(10, f"unexpected_message: record type {rtype} before ServerHello")
            return self._handshake_bytes(body)
        if rtype != APPLICATION_DATA:
            raise TlsAlert(10, f"unexpected_message: plaintext record type {rtype} after ServerHello")
        ctype, content = self._read.open(header, body)
        if ctype == APPLICATION_DATA:
            if self._state is not State.CONNECTED:
                raise TlsAlert(10, "unexpected_message: application data before the handshake completed")
            return AppData(content)
        if ctype == HANDSHAKE:
            if self._state is State.CONNECTED:
                self._post_handshake(content)
                return None
            return self._handshake_bytes(content)
        if ctype == ALERT:
            if content[:2] in (b"\x01\x00", b"\x02\x00"):
                self._state = State.CLOSED
                return PeerClosed()
            raise self._alert(content)
        raise TlsAlert(10, f"unexpected_message: content type {ctype}")

    @staticmethod
    def _alert(body: bytes) -> TlsAlert:
        code = body[1] if len(body) >= 2 else 0
        return TlsAlert(code, f"TLS: the server sent alert {code}")

    # -- handshake ---------------------------------------------------------------------

    def _handshake_bytes(self, data: bytes) -> Event | None:
        hb = self._hs_buf
        hb += data
        event: Event | None = None
        while len(hb) >= 4 and self._state is not State.CONNECTED:
            n = int.from_bytes(hb[1:4], "big")
            if len(hb) < 4 + n:
                break
            msg = bytes(hb[: 4 + n])
            del hb[: 4 + n]
            handler = _TABLE.get((self._state, msg[0]))
            if handler is None:
                raise TlsAlert(10, f"unexpected_message: handshake type {msg[0]} in state {self._state.name}")
            event = handler(self, msg) or event
        if len(hb) > 1 << 16:
            raise TlsAlert(22, "handshake message too long")
        return event

    def _server_hello(self, msg: bytes) -> None:
        body = msg[4:]
        if len(body) < 38:
            raise TlsAlert(50, "decode_error: short ServerHello")
        if body[2:34] == HRR_RANDOM:
            raise TlsError("TLS: HelloRetryRequest is not supported (the server did not take the X25519 share)")
        sid, pos = _vec(body, 34, 1)
        if sid != self._session_id:
            raise TlsAlert(47, "illegal_parameter: ServerHello does not echo the session_id")
        if pos + 3 > len(body):
            raise TlsAlert(50, "decode_error: short ServerHello")
        suite = SUITES.get(int.from_bytes(body[pos : pos + 2], "big"))
        if suite is None or body[pos + 2] != 0:
            raise TlsAlert(47, "illegal_parameter: ServerHello picked a cipher suite not offered for TLS 1.3")
        exts_block, _ = _vec(body, pos + 3, 2)
        exts = _extensions(exts_block)
        if exts.get(0x002B) != b"\x03\x04":
            raise TlsError("TLS: the server did not negotiate TLS 1.3")
        share = exts.get(0x0033, b"")
        if len(share) != 36 or int.from_bytes(share[:2], "big") != X25519 or share[2:4] != b"\x00\x20":
            raise TlsAlert(47, "illegal_parameter: the server's key share is not X25519")
        try:
            shared = self._key.exchange(X25519PublicKey.from_public_bytes(share[4:]))
        except ValueError:
            raise TlsAlert(47, "illegal_parameter: bad X25519 share from the server") from None
        self._transcript += msg
        self.suite = suite
        self._schedule = KeySchedule(suite, shared, self._hash())
        self._read = RecordCipher(suite, self._schedule.server_hs)
        self._state = State.WAIT_EE

    def _hash(self) -> bytes:
        assert self.suite is not None
        return hashlib.new(self.suite.hash_name, self._transcript).digest()

    def _encrypted_extensions(self, msg: bytes) -> None:
        block, _ = _vec(msg, 4, 2)
        alpn = _extensions(block).get(0x0010)
        if alpn:
            names, _ = _vec(alpn, 0, 2)
            name, _ = _vec(names, 0, 1)
            self.alpn = name.decode("ascii", "replace")
        self._transcript += msg
        self._state = State.WAIT_CERT

    def _certificate(self, msg: bytes) -> None:
        _ctx, pos = _vec(msg, 4, 1)
        certs_block, _ = _vec(msg, pos, 3)
        certs: list[bytes] = []
        pos = 0
        while pos < len(certs_block):
            der, pos = _vec(certs_block, pos, 3)
            _ext, pos = _vec(certs_block, pos, 2)
            certs.append(der)
        if not certs:
            raise TlsAlert(50, "decode_error: the server sent no certificate")
        self._verify(certs)
        self.certificates = certs
        self._transcript += msg
        self._state = State.WAIT_CV

    def _certificate_verify(self, msg: bytes) -> None:
        if len(msg) < 8:
            raise TlsAlert(50, "decode_error: short CertificateVerify")
        scheme = int.from_bytes(msg[4:6], "big")
        signature, _ = _vec(msg, 6, 2)
        verify_signature(self.certificates[0], scheme, signature, _CV_PREFIX + self._hash())
        self._transcript += msg
        self._state = State.WAIT_FIN

    def _finished(self, msg: bytes) -> Event:
        sched = self._schedule
        assert sched is not None and self.suite is not None
        expected = sched.finished(sched.server_hs, self._hash())
        if not hmac.compare_digest(expected, msg[4:]):
            raise TlsAlert(51, "decrypt_error: the server Finished does not verify")
        self._transcript += msg
        client_ap, server_ap = sched.application(self._hash())
        fin = sched.finished(sched.client_hs, self._hash())
        hs_write = RecordCipher(self.suite, sched.client_hs)
        self._out += b"\x14\x03\x03\x00\x01\x01"  # middlebox-compatibility change_cipher_spec, as Chrome
        self._out += hs_write.seal(HANDSHAKE, b"\x14" + len(fin).to_bytes(3, "big") + fin)
        self._read = RecordCipher(self.suite, server_ap)
        self._write = RecordCipher(self.suite, client_ap)
        self._state = State.CONNECTED
        self._transcript = bytearray()
        return HandshakeDone()

    def _post_handshake(self, content: bytes) -> None:
        # NewSessionTicket is ignored (tickets are not used).  A REALITY server may send a
        # one-byte "NewSessionTicket" record only to mirror its target's record sizes, so
        # a record starting with that type is skipped whole rather than parsed.
        if not content or content[0] == NEW_SESSION_TICKET:
            return
        if content[0] == KEY_UPDATE and len(content) == 5 and content[1:4] == b"\x00\x00\x01":
            assert self._read is not None and self._write is not None
            self._read = RecordCipher(self._read.suite, next_secret(self._read.suite, self._read.secret))
            if content[4] == 1:
                self._out += self._write.seal(HANDSHAKE, b"\x18\x00\x00\x01\x00")
                self._write = RecordCipher(self._write.suite, next_secret(self._write.suite, self._write.secret))
            return
        raise TlsAlert(10, f"unexpected_message: post-handshake message type {content[0]}")


_TABLE: dict[tuple[State, int], Callable[[Tls13Client, bytes], Event | None]] = {
    (State.WAIT_SH, SERVER_HELLO): Tls13Client._server_hello,
    (State.WAIT_EE, ENCRYPTED_EXTENSIONS): Tls13Client._encrypted_extensions,
    (State.WAIT_CERT, CERTIFICATE): Tls13Client._certificate,
    (State.WAIT_CV, CERTIFICATE_VERIFY): Tls13Client._certificate_verify,
    (State.WAIT_FIN, FINISHED): Tls13Client._finished,
}
