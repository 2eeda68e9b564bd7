"""The REALITY client handshake over one stream (what :class:`~tunray_reality.layer.RealitySecurity` wraps with)."""

from __future__ import annotations

import time

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from loguru import logger
from tunray.bytestream import ByteStream
from tunray.net.address import Destination

from tunray_reality.auth import (
    CLIENT_VERSION,
    certificate_is_reality,
    derive_auth_key,
    seal_hello,
    session_id_plaintext,
)
from tunray_reality.client import Tls13Client
from tunray_reality.errors import RealityRefused, TlsError
from tunray_reality.hello import build_client_hello
from tunray_reality.settings import RealityOptions
from tunray_reality.stream import RealityStream, run_handshake


class RealityDialer:
    """One configured REALITY client: the server's key parsed once, a handshake per :meth:`wrap`."""

    def __init__(self, options: RealityOptions, alpn: tuple[str, ...]) -> None:
        self.options = options
        self.alpn = alpn
        self._server_key = X25519PublicKey.from_public_bytes(options.public_key)

    async def wrap(self, inner: ByteStream, dest: Destination) -> RealityStream:
        opts = self.options
        name = opts.server_name or dest.host_text
        key = X25519PrivateKey.generate()
        hello = build_client_hello(name, key.public_key().public_bytes_raw(), self.alpn)
        auth_key = derive_auth_key(key.exchange(self._server_key), hello.random)
        plain = session_id_plaintext(CLIENT_VERSION, int(time.time()), opts.short_id)
        raw = seal_hello(hello.raw, hello.random, auth_key, plain)
        if opts.show:
            logger.debug("reality: {} sessionId plaintext {} authKey[:16] {}", dest.netloc, plain.hex(), auth_key[:16].hex())

        def verify(certs: list[bytes]) -> None:
            if not certificate_is_reality(auth_key, certs[0]):
                raise RealityRefused(
                    f"REALITY: server {dest.netloc} (serverName {name!r}) did not prove the key: its certificate is "
                    "not REALITY's for this publicKey/shortId (wrong key or shortId, or not a REALITY server); "
                    "connection closed before any data"
                )

        try:
            return await run_handshake(inner, Tls13Client(raw, key, verify))
        except RealityRefused as exc:
            logger.warning("{}", exc)
            raise
        except TlsError as exc:
            logger.warning("reality: {} (server {}, serverName {!r})", exc, dest.netloc, name)
            raise TlsError(f"{exc} (server {dest.netloc}, serverName {name!r})") from None
