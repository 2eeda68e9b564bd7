"""``tlsSettings`` for a client (Xray ``infra/conf/transport_internet.go`` ``TLSConfig``).

Verification is on by default: the system roots (unless ``disableSystemRoot``) plus
any ``certificates`` with ``usage: "verify"``, and the host name checked against
``serverName`` (default: the server address).  ``pinnedPeerCertSha256`` replaces chain
verification by a pin on the SHA-256 of the leaf certificate's DER;
``verifyPeerCertByName`` keeps the chain check but matches the certificate against
those names instead of ``serverName``.  ``allowInsecure: true`` is refused, as current
Xray refuses it.
"""

from __future__ import annotations

import base64
import binascii
import ssl
from dataclasses import dataclass

from tunray.config.errors import ConfigError, NotSupported, join
from tunray.config.schema import AnyValue, Bool, Enum, Field, ListOf, Schema, Settings, Str, Unsupported

VERSIONS = {
    "1.0": ssl.TLSVersion.TLSv1,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}
DEFAULT_ALPN = ("h2", "http/1.1")
#: What Xray offers when ``alpn`` is not set, by ``streamSettings.network``: WebSocket and
#: HTTPUpgrade need HTTP/1.1 (a server picking h2 would break them), gRPC needs h2.
NETWORK_ALPN = {"ws": ("http/1.1",), "websocket": ("http/1.1",), "httpupgrade": ("http/1.1",), "grpc": ("h2",), "gun": ("h2",)}

CERTIFICATE_SCHEMA = Schema(
    Field("usage", Enum("encipherment", "verify", "issue"), default="encipherment", doc="what the certificate is for"),
    Field("certificateFile", Str(), default="", doc="PEM file"),
    Field("certificate", ListOf(Str(), allow_single=True), default=[], doc="PEM lines, inline"),
    Field("keyFile", Str(), default="", doc="PEM private key file (client certificate)"),
    Field("key", ListOf(Str(), allow_single=True), default=[], doc="PEM key lines, inline"),
    Field("ocspStapling", AnyValue(), default=None, doc="server only; ignored"),
    Field("oneTimeLoading", AnyValue(), default=None, doc="ignored"),
    Field("buildChain", AnyValue(), default=None, doc="server only; ignored"),
)

TLS_SCHEMA = Schema(
    Field("serverName", Str(), default="", doc="SNI and the name to verify (default: server address)"),
    Field(
        "alpn",
        ListOf(Str(), comma_string=True),
        default=None,
        doc="ALPN protocols to offer (default by network: h2+http/1.1 raw, http/1.1 ws/httpupgrade, h2 grpc)",
    ),
    Field("fingerprint", Str(), default="", doc="uTLS browser fingerprint: accepted, ignored (Go only)"),
    Field(
        "pinnedPeerCertSha256",
        ListOf(Str(), comma_string=True),
        default=[],
        doc="SHA-256 of the leaf certificate (hex or base64); set => verify by pin only",
    ),
    Field("verifyPeerCertByName", ListOf(Str(), comma_string=True), default=[], doc="names to verify instead"),
    Field("minVersion", Enum(*VERSIONS), default=None, doc='lowest TLS version ("1.2", "1.3")'),
    Field("maxVersion", Enum(*VERSIONS), default=None, doc="highest TLS version"),
    Field("certificates", ListOf(CERTIFICATE_SCHEMA), default=[], doc='CAs (usage "verify") or a client cert'),
    Field("disableSystemRoot", Bool(), default=False, doc="do not trust the system CA store"),
    Field("allowInsecure", Bool(), default=False, doc="refused when true: use pinnedPeerCertSha256"),
    Field(
        "enableSessionResumption",
        Bool(),
        default=False,
        doc="resume TLS sessions with tickets the server sent (per outbound, the last 128 server names)",
    ),
    Field("masterKeyLog", Str(), default="", doc="NSS key log file (debugging)"),
    Field("rejectUnknownSni", Bool(), default=False, doc="server only; ignored"),
    Unsupported("cipherSuites", "tlsSettings.cipherSuites"),
    Unsupported("curvePreferences", "tlsSettings.curvePreferences"),
    Unsupported("echConfigList", "tlsSettings.echConfigList (ECH)"),
    Unsupported("echServerKeys", "tlsSettings.echServerKeys (ECH)"),
    Unsupported("echSockopt", "tlsSettings.echSockopt (ECH)"),
)


def _pin(text: str, path: str) -> bytes:
    compact = text.strip().replace(":", "")
    if len(compact) == 64:
        try:
            return bytes.fromhex(compact)
        except ValueError:
            pass
    try:
        raw = base64.b64decode(compact + "=" * (-len(compact) % 4), altchars=b"-_" if "-" in compact or "_" in compact else None, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ConfigError(path, f"{text!r} is not a SHA-256 (64 hex digits or 32 bytes in base64)")
    return raw


@dataclass(frozen=True)
class TlsOptions:
    """The client-side result of validating ``tlsSettings``."""

    server_name: str = ""
    alpn: tuple[str, ...] = DEFAULT_ALPN
    fingerprint: str = ""
    pins: tuple[bytes, ...] = ()
    verify_names: tuple[str, ...] = ()
    min_version: ssl.TLSVersion | None = None
    max_version: ssl.TLSVersion | None = None
    ca_pem: tuple[str, ...] = ()
    ca_files: tuple[str, ...] = ()
    client_cert: tuple[str, str] | None = None
    system_roots: bool = True
    key_log: str = ""
    session_resumption: bool = False


def parse_options(raw: object, path: str, network: str = "raw") -> TlsOptions:
    """Validate ``tlsSettings`` (*path* names it); raise :class:`ConfigError`."""
    s: Settings = TLS_SCHEMA.parse(raw, path)
    if s.allowInsecure:
        raise ConfigError(
            join(path, "allowInsecure"),
            "is removed (as in current Xray): pin the server's certificate with pinnedPeerCertSha256 "
            "or trust its CA with certificates [{usage: \"verify\"}]",
        )
    pins = tuple(_pin(p, join(join(path, "pinnedPeerCertSha256"), i)) for i, p in enumerate(s.pinnedPeerCertSha256) if p.strip())
    names = tuple(n.strip() for n in s.verifyPeerCertByName if n.strip())
    if s.minVersion and s.maxVersion and VERSIONS[s.minVersion] > VERSIONS[s.maxVersion]:
        raise ConfigError(join(path, "minVersion"), f"{s.minVersion} is above maxVersion {s.maxVersion}")
    ca_pem: list[str] = []
    ca_files: list[str] = []
    client: tuple[str, str] | None = None
    for i, cert in enumerate(s.certificates):
        cpath = join(join(path, "certificates"), i)
        if not cert.certificateFile and not cert.certificate:
            raise ConfigError(cpath, "needs certificateFile or certificate")
        if cert.usage == "verify":
            if cert.certificateFile:
                ca_files.append(cert.certificateFile)
            if cert.certificate:
                ca_pem.append("\n".join(cert.certificate))
        elif cert.usage == "issue":
            raise NotSupported(join(cpath, "usage"), 'certificate usage "issue" (server side)')
        else:
            if not (cert.certificateFile and cert.keyFile):
                raise NotSupported(cpath, "an inline client certificate (use certificateFile and keyFile)")
            client = (cert.certificateFile, cert.keyFile)
    return TlsOptions(
        server_name=s.serverName,
        alpn=(
            tuple(a.strip() for a in s.alpn if a.strip())
            if s.alpn is not None
            else NETWORK_ALPN.get(network.lower(), DEFAULT_ALPN)
        ),
        fingerprint=s.fingerprint,
        pins=pins,
        verify_names=names,
        min_version=VERSIONS[s.minVersion] if s.minVersion else None,
        max_version=VERSIONS[s.maxVersion] if s.maxVersion else None,
        ca_pem=tuple(ca_pem),
        ca_files=tuple(ca_files),
        client_cert=client,
        system_roots=not s.disableSystemRoot,
        key_log=s.masterKeyLog,
        session_resumption=bool(s.enableSessionResumption),
    )


def build_context(opts: TlsOptions) -> ssl.SSLContext:
    """A client context: verification on unless pinned; raises ``OSError``/``ssl.SSLError`` on bad files."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname, like create_default_context
    if opts.system_roots:
        ctx.load_default_certs()
    for pem in opts.ca_pem:
        ctx.load_verify_locations(cadata=pem)
    for path in opts.ca_files:
        ctx.load_verify_locations(cafile=path)
    if opts.pins:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif opts.verify_names:
        ctx.check_hostname = False  # the names are matched after the handshake
    if opts.min_version is not None:
        ctx.minimum_version = opts.min_version
    if opts.max_version is not None:
        ctx.maximum_version = opts.max_version
    if opts.alpn:
        ctx.set_alpn_protocols(list(opts.alpn))
    if opts.client_cert is not None:
        ctx.load_cert_chain(*opts.client_cert)
    if opts.key_log:
        ctx.keylog_filename = opts.key_log
    return ctx
