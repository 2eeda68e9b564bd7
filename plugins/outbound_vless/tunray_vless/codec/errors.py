"""The one exception every VLESS codec raises for malformed or unencodable input."""

from __future__ import annotations


class CodecError(ValueError):
    """Bytes that do not follow the wire format, or a value the format cannot carry."""
