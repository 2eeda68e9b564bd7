"""The ``security:tls`` layer: validates ``tlsSettings`` and wraps a stream in TLS."""

from __future__ import annotations

import hashlib
import ipaddress
import ssl
from collections import OrderedDict
from typing import ClassVar

from loguru import logger
from tunray.bytestream import ByteStream
from tunray.config.errors import ConfigError, join
from tunray.config.schema import Settings
from tunray.net.address import Destination
from tunray.transport import Layer

from tunray_tls.settings import TlsOptions, build_context, parse_options
from tunray_tls.stream import TlsError, TlsStream, handshake, leaf_der

_fingerprint_logged = False
SESSIONS = 128  # server names whose latest session a layer keeps (Xray: a 128-entry LRU cache)


def _name_matches(pattern: str, name: str) -> bool:
    """RFC 6125 matching: exact, or a ``*`` as the whole left-most label."""
    pattern = pattern.lower().rstrip(".")
    name = name.lower().rstrip(".")
    if pattern == name:
        return True
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return False


def cert_matches(der: bytes, names: tuple[str, ...]) -> bool:
    """True if the certificate's subjectAltName covers one of *names* (DNS or IP)."""
    from cryptography import x509  # here: only pinned-certificate checks need it (~10 MiB mapped)

    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    dns = san.get_values_for_type(x509.DNSName)
    ips = san.get_values_for_type(x509.IPAddress)
    for name in names:
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            if any(_name_matches(p, name) for p in dns):
                return True
        else:
            if ip in ips:
                return True
    return False


class TlsSecurity(Layer):
    name: ClassVar[str] = "security:tls"

    @classmethod
    def validate(cls, stream: Settings, path: str) -> None:
        parse_options(stream.tlsSettings, join(path, "tlsSettings"))

    def __init__(self, stream: Settings) -> None:
        super().__init__(stream)
        self.options: TlsOptions = parse_options(stream.tlsSettings, "streamSettings.tlsSettings", stream.network)
        try:
            self.context = build_context(self.options)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("streamSettings.tlsSettings.certificates", f"cannot load: {exc}") from None
        #: ``enableSessionResumption``: the latest resumable session per server name, LRU.
        self.sessions: OrderedDict[str, ssl.SSLSession] | None = (
            OrderedDict() if self.options.session_resumption else None
        )
        global _fingerprint_logged
        if self.options.fingerprint and not _fingerprint_logged:
            _fingerprint_logged = True
            logger.debug(
                "tls: fingerprint {!r} ignored: only Go's uTLS can mimic a browser; using OpenSSL's ClientHello",
                self.options.fingerprint,
            )

    async def wrap(self, inner: ByteStream, dest: Destination) -> TlsStream:
        opts = self.options
        name = opts.server_name or dest.host_text
        sessions = self.sessions
        session = sessions.get(name) if sessions is not None else None

        def keep(new: ssl.SSLSession) -> None:
            assert sessions is not None
            sessions[name] = new
            sessions.move_to_end(name)
            if len(sessions) > SESSIONS:
                sessions.popitem(last=False)

        try:
            stream = await handshake(inner, self.context, name, session=session,
                                     on_session=keep if sessions is not None else None)
        except TlsError as exc:
            logger.warning("tls: {} (server {}, serverName {!r})", exc, dest.netloc, name)
            raise TlsError(f"{exc} (server {dest.netloc}, serverName {name!r})") from None
        if opts.pins:
            der = leaf_der(stream)
            digest = hashlib.sha256(der).digest()
            if digest not in opts.pins:
                logger.warning(
                    "tls: certificate refused: pinnedPeerCertSha256 does not match (server {} sent {})",
                    dest.netloc,
                    digest.hex(),
                )
                raise TlsError(f"certificate refused: pin mismatch, server sent sha256 {digest.hex()}")
        elif opts.verify_names and not cert_matches(leaf_der(stream), opts.verify_names):
            logger.warning("tls: certificate refused: not valid for {} (server {})", ",".join(opts.verify_names), dest.netloc)
            raise TlsError(f"certificate refused: not valid for verifyPeerCertByName {list(opts.verify_names)}")
        return stream
