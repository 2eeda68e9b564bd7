"""Xray's user IDs: a UUID in text, or any 1-30 byte string mapped to a UUIDv5.

The mapping (Xray ``common/uuid``) is SHA-1 over 16 zero bytes followed by the UTF-8
string, truncated to 16 bytes, with the version nibble set to 5 and the RFC 4122
variant bits set: ``"example"`` gives ``feb54431-301b-52bb-a6dd-e1e93e81bb9e``.
"""

from __future__ import annotations

import hashlib
import re
import uuid

_HEX = re.compile(r"[0-9a-fA-F]{32}")


def from_text(text: str) -> uuid.UUID:
    """Parse a UUID (dashes optional) or map a short string; raises ``ValueError``."""
    compact = text.replace("-", "")
    if len(text) in (32, 36) and _HEX.fullmatch(compact):
        if len(text) == 36 and [len(p) for p in text.split("-")] != [8, 4, 4, 4, 12]:
            raise ValueError(f"{text!r} is not a valid UUID")
        return uuid.UUID(hex=compact)
    raw = text.encode()
    if not 1 <= len(raw) <= 30:
        raise ValueError(f"{text!r} is neither a UUID nor a 1-30 byte string")
    digest = bytearray(hashlib.sha1(bytes(16) + raw).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    return uuid.UUID(bytes=bytes(digest))
