"""Configuration: reading Xray-style files, merging them, validating them against schemas."""

from __future__ import annotations

from tunray.config.errors import ConfigError

__all__ = ["ConfigError"]
