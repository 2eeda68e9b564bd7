"""The ``security:reality`` layer: validates ``realitySettings``; :mod:`tunray_reality.dial` runs the handshake.

The handshake module (and ``cryptography`` with it, ~10 MiB mapped) is imported when a
config builds a REALITY layer, not when the plugin registers: a config without REALITY
never loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from tunray.bytestream import ByteStream
from tunray.config.errors import ConfigError, join
from tunray.config.schema import Settings
from tunray.net.address import Destination
from tunray.transport import Layer

from tunray_reality.settings import RealityOptions, parse_options

if TYPE_CHECKING:
    from tunray_reality.stream import RealityStream

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
        self.alpn: tuple[str, ...] = ("h2", "http/1.1")
        from tunray_reality.dial import RealityDialer

        self._dialer = RealityDialer(self.options, self.alpn)

    async def wrap(self, inner: ByteStream, dest: Destination) -> RealityStream:
        return await self._dialer.wrap(inner, dest)
