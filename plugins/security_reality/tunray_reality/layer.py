"""The ``security:reality`` layer: validates ``realitySettings`` and runs the REALITY handshake."""

from __future__ import annotations

import time
from typing import ClassVar

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from loguru import logger
from tunray.bytestream import ByteStream
from tunray.config.errors import ConfigError, join
from tunray.config.schema import Settings
from tunray.net.address import Destination
from tunray.transport import Layer

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
from tunray_reality.settings import RealityOptions, parse_options
from tunray_reality.stream import RealityStream, run_handshake

#: Xray: "REALITY only supports RAW, XHTTP and gRPC for now."
NETWORKS = frozenset({"", "raw", "tcp", "xhttp", "splithttp", "grpc", "gun"})


class RealitySecurity(Layer):
    name: ClassVar[str] = "security:reality"

    @classmethod
    def validate(cls, stream: Settings, path: str) -> None:
        parse_options(stream.realitySettings, join(path, "realitySettings"))
        network = str(stream.network or "").lower()
        if network not in NETWORKS:
            raise ConfigError(join(path, "network"), f"REALITY works with raw, xhttp and grpc only (as in Xray), not {network!r}")

    def __init__(self, stream: Settings) -> None:
        super().__init__(stream)
        self.options: RealityOptions = parse_options(stream.realitySettings, "streamSettings.realitySettings")
        self._server_key = X25519PublicKey.from_public_bytes(self.options.public_key)
        self.alpn: tuple[str, ...] = ("h2", "http/1.1")

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
