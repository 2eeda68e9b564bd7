"""``realitySettings`` for a client (Xray ``infra/conf/transport_security.go`` ``REALITYConfig``).

Rules as Xray applies them on the client side: ``fingerprint`` "" means chrome and
``unsafe``/``hellogolang`` are refused; ``publicKey`` (alias ``password``) is 32 bytes
in unpadded base64url; ``shortId`` is at most 16 hex digits, zero-padded on the right
to 8 bytes; ``spiderX`` starts with "/".  Keys that only a server uses are a config
error naming the key.  ``mldsa65Verify`` must be empty (ML-DSA-65 is not verified).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from loguru import logger
from tunray.config.errors import ConfigError, NotSupported, join
from tunray.config.schema import AnyValue, Bool, Field, Schema, Settings, Str

#: Names Xray's ``tls.GetFingerprint`` knows (lower case).  tunray sends one
#: Chrome-shaped hello for all of them (see :mod:`tunray_reality.hello`).
FINGERPRINTS = frozenset(
    {"", "chrome", "firefox", "safari", "ios", "android", "edge", "360", "qq", "random", "randomized", "randomizednoalpn"}
)
CHROME_LIKE = frozenset({"", "chrome", "edge"})
REFUSED_FINGERPRINTS = frozenset({"unsafe", "hellogolang"})

SERVER_ONLY = (
    "target", "dest", "type", "xver", "serverNames", "privateKey", "minClientVer", "maxClientVer",
    "maxTimeDiff", "shortIds", "mldsa65Seed", "limitFallbackUpload", "limitFallbackDownload",
)  # fmt: skip

REALITY_SCHEMA = Schema(
    Field("serverName", Str(), default="", doc="SNI sent in the ClientHello (default: the server address)"),
    Field("fingerprint", Str(), default="chrome", doc="browser ClientHello to mimic; tunray sends Chrome's shape"),
    Field("publicKey", Str(), default="", aliases=("password",), doc="the server's X25519 public key (base64url)"),
    Field("shortId", Str(), default="", doc="up to 16 hex digits; must be in the server's shortIds"),
    Field("spiderX", Str(), default="/", doc='initial path of the decoy crawl (must start with "/")'),
    Field("mldsa65Verify", Str(), default="", doc="ML-DSA-65 public key (base64url): not supported when set"),
    Field("show", Bool(), default=False, doc="log the REALITY handshake details (debug level)"),
    Field("masterKeyLog", Str(), default="", doc="NSS key log file: not supported when set"),
    *(Field(key, AnyValue(), default=None, doc="server only: an error here") for key in SERVER_ONLY),
)


@dataclass(frozen=True, slots=True)
class RealityOptions:
    server_name: str
    fingerprint: str
    public_key: bytes
    short_id: bytes
    spider_x: str
    show: bool


def decode_key(text: str) -> bytes | None:
    """A 32-byte X25519 key in Xray's unpadded base64url (padding tolerated), else None."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


def parse_options(raw: object, path: str) -> RealityOptions:
    s: Settings = REALITY_SCHEMA.parse(raw, path)
    for key in SERVER_ONLY:
        value = getattr(s, key)
        if value not in (None, "", [], {}, 0):
            hint = {"serverNames": ' (use "serverName")', "shortIds": ' (use "shortId")', "privateKey": ' (use "publicKey")'}
            raise ConfigError(join(path, key), f"is a REALITY server setting, not valid in an outbound{hint.get(key, '')}")
    fp = s.fingerprint.strip().lower()
    if fp in REFUSED_FINGERPRINTS:
        raise ConfigError(join(path, "fingerprint"), f"{s.fingerprint!r} is refused for REALITY (as in Xray): use a browser fingerprint")
    if fp not in FINGERPRINTS:
        raise ConfigError(join(path, "fingerprint"), f"unknown fingerprint {s.fingerprint!r}")
    if fp not in CHROME_LIKE:
        logger.warning("config: {}: fingerprint {!r}: tunray sends its Chrome-shaped ClientHello", join(path, "fingerprint"), fp)
    named = {str(k) for k in raw} if isinstance(raw, dict) else set()
    keypath = join(path, "password" if "password" in named and "publicKey" not in named else "publicKey")
    if not s.publicKey:
        raise ConfigError(keypath, "is required: the server's X25519 public key (xray x25519 / tunray x25519)")
    public_key = decode_key(s.publicKey)
    if public_key is None:
        raise ConfigError(keypath, f"{s.publicKey!r} is not a 32-byte key in base64url")
    sid_text = s.shortId
    if len(sid_text) > 16:
        raise ConfigError(join(path, "shortId"), f"{sid_text!r} is too long (at most 16 hex digits)")
    try:
        short_id = bytes.fromhex(sid_text) if len(sid_text) % 2 == 0 else b"\xff" * 9
    except ValueError:
        short_id = b"\xff" * 9
    if len(short_id) > 8:
        raise ConfigError(join(path, "shortId"), f"{sid_text!r} is not an even number of hex digits")
    spider = s.spiderX or "/"
    if not spider.startswith("/"):
        raise ConfigError(join(path, "spiderX"), f"{spider!r} must start with '/'")
    if spider != "/":
        logger.warning("config: {}: {!r}: tunray does not run the decoy crawl; a refused connection is closed at once", join(path, "spiderX"), spider)
    if s.mldsa65Verify:
        raise NotSupported(join(path, "mldsa65Verify"), "ML-DSA-65 verification of REALITY (mldsa65Verify)")
    if s.masterKeyLog:
        raise NotSupported(join(path, "masterKeyLog"), "REALITY key logging (masterKeyLog)")
    return RealityOptions(s.serverName, fp or "chrome", public_key, short_id.ljust(8, b"\x00"), spider, s.show)
