"""Errors a user can cause with a config file.

A :class:`ConfigError` is printed as one line, ``config error: PATH: MESSAGE``, and the
process exits with :data:`EXIT_CONFIG` and no traceback (tox's ``HandledError``).
Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

import re
from typing import Any

EXIT_CONFIG = 23  # Xray exits 23 on a bad config; users' scripts already test for it.


#: Keys whose values are credentials (compared lower-case, without list indices).  An error
#: located at one of them never shows the value: quoted text in its message is masked.
SECRET_KEYS = frozenset(
    {
        "id", "uuid", "password", "pass", "psk", "presharedkey", "privatekey", "secretkey",
        "secret", "token", "seed", "key", "shortid", "shortids", "auth", "authorization",
    }
)  # fmt: skip

_LAST_KEY = re.compile(r"([^.\[\]]+)(?:\[\d+\])*$")
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


def is_secret(path: str) -> bool:
    """True if *path* (``outbounds[0].settings.vnext[0].users[0].id``) names a credential."""
    m = _LAST_KEY.search(path)
    return m is not None and m.group(1).lower() in SECRET_KEYS


def mask(value: Any) -> str:
    """What logs and errors show instead of a secret: its length, never its characters."""
    return f"<hidden, {len(value)} chars>" if isinstance(value, str) else "<hidden>"


def mask_quoted(message: str) -> str:
    """*message* with every quoted literal replaced by :func:`mask` of it."""
    return _QUOTED.sub(lambda m: mask(m.group(0)[1:-1]), message)


class ConfigError(Exception):
    """A mistake in the user's configuration, located by its JSON path.

    When the path names a credential (:func:`is_secret`) the message's quoted literals
    are masked, so a malformed id or key is never echoed to a terminal or log.
    """

    def __init__(self, path: str, message: str) -> None:
        if is_secret(path):
            message = mask_quoted(message)
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
