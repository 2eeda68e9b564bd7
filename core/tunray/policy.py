"""Policy levels (Xray ``policy.levels``): timeouts and buffer sizes per user level."""

from __future__ import annotations

from dataclasses import dataclass

from tunray.config.schema import Settings


@dataclass(frozen=True, slots=True)
class LevelPolicy:
    handshake: float = 4.0
    conn_idle: float = 300.0
    uplink_only: float = 2.0
    downlink_only: float = 5.0
    buffer_size: int = 512 * 1024

    @classmethod
    def from_settings(cls, s: Settings) -> LevelPolicy:
        buffer = 512 * 1024 if s.bufferSize < 0 else s.bufferSize * 1024
        return cls(float(s.handshake), float(s.connIdle), float(s.uplinkOnly), float(s.downlinkOnly), buffer)


DEFAULT_POLICY = LevelPolicy()
