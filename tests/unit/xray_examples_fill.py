"""Filling the placeholders of XTLS/Xray-examples client configs, as a user would.

The corpus leaves ids, addresses, keys and names empty (``""``), or writes template
tokens (``{{ uuid }}``, a bare ``{{ port }}``).  :func:`fill` replaces exactly those with
valid values and touches nothing else, so ``tunray run -test`` sees the config as a user
who filled in their own server would.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tunray.config.loader import strip_json_comments

UUID = "27848739-7e62-4138-9fd3-098a63964b6b"
# A valid X25519 public key (32 bytes, base64url without padding) for REALITY's publicKey.
X25519_PUBLIC = "OBR2JYROQB8odK5glVW_KLnsWl3UZ-voyGq_9ihQgTI"
EMPTY_FILL = {
    "id": UUID,
    "address": "127.0.0.1",
    "serverName": "example.com",
    "publicKey": X25519_PUBLIC,
    "password": "placeholder-password",
    "user": "user",
    "pass": "pass",
    "serviceName": "grpc",
    "path": "/",
    "host": "example.com",
    "dest": "example.com:443",
}
TOKEN_FILL = {"uuid": UUID, "port": "443", "host": "127.0.0.1", "seed": "seed", "password": "placeholder-password"}
_TOKEN = re.compile(r'("?)\{\{\s*([^}]*?)\s*\}\}("?)')


def _token(m: re.Match[str]) -> str:
    name = m.group(2).strip()
    value = TOKEN_FILL.get(name, "127.0.0.1" if "address" in name else "placeholder")
    if m.group(1) and m.group(3):
        return json.dumps(value)
    return value  # a bare token stands for a number (``"port": {{ port }}``)


def _fill(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _fill(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, key) for v in value]
    if value == "" and key in EMPTY_FILL:
        return EMPTY_FILL[key]
    return value


def fill(text: str) -> dict[str, Any]:
    """The config in *text* (JSON with comments) with its placeholders filled."""
    data = json.loads(strip_json_comments(_TOKEN.sub(_token, text)))
    assert isinstance(data, dict)
    filled: dict[str, Any] = _fill(data)
    return filled
