"""Errors a user can cause with a config file.

A :class:`ConfigError` is printed as one line, ``config error: PATH: MESSAGE``, and the
process exits with :data:`EXIT_CONFIG` and no traceback (tox's ``HandledError``).
Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_CONFIG = 23  # Xray exits 23 on a bad config; users' scripts already test for it.


class ConfigError(Exception):
    """A mistake in the user's configuration, located by its JSON path."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(path, message)
        self.path = path
        self.message = message

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class NotSupported(ConfigError):
    """A known Xray feature that no installed plugin provides."""

    def __init__(self, path: str, what: str) -> None:
        super().__init__(path, f"{what} is not supported by tunray (no installed plugin provides it)")


def join(path: str, key: str | int) -> str:
    """Extend a JSON path: ``join("outbounds", 1) == "outbounds[1]"``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key
