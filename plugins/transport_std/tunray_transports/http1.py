"""The HTTP/1.1 Upgrade exchange used by WebSocket and HTTPUpgrade, sans-IO.

The client writes one ``GET`` request (RFC 9110/9112) and reads the response head up
to the blank line; whatever follows the head already belongs to the upgraded stream
and is returned as ``leftover``.  WebSocket checks ``Sec-WebSocket-Accept`` (RFC 6455
4.1: base64 of SHA-1 over the key and the GUID below); HTTPUpgrade, like Xray, only
checks the status and the ``Upgrade``/``Connection`` headers.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEAD = 16 * 1024


class HandshakeError(ConnectionError):
    """The server did not upgrade the connection."""


def ws_key(raw16: bytes) -> str:
    return base64.b64encode(raw16).decode()


def ws_accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


def build_request(target: str, host: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """``GET target HTTP/1.1`` with Host first, then *headers* in order."""
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass(frozen=True, slots=True)
class ResponseHead:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]  # (lower-case name, value)

    def get(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def has_token(self, name: str, token: str) -> bool:
        """Whether a comma-separated header (``Connection: keep-alive, Upgrade``) lists *token*."""
        value = self.get(name) or ""
        return token.lower() in (t.strip().lower() for t in value.split(","))


class ResponseReader:
    """Collect bytes until the response head is complete."""

    __slots__ = ("_buf", "leftover", "max_head")

    def __init__(self, max_head: int = MAX_HEAD) -> None:
        self._buf = bytearray()
        self.leftover = b""
        self.max_head = max_head

    def feed(self, data: bytes) -> ResponseHead | None:
        """The parsed head once the blank line has arrived (then see ``leftover``), else None."""
        start = max(0, len(self._buf) - 3)
        self._buf += data
        end = self._buf.find(b"\r\n\r\n", start)
        if end < 0:
            if len(self._buf) > self.max_head:
                raise HandshakeError(f"HTTP response head longer than {self.max_head} bytes")
            return None
        head = bytes(self._buf[:end])
        self.leftover = bytes(self._buf[end + 4 :])
        self._buf.clear()
        return parse_head(head)


def parse_head(head: bytes) -> ResponseHead:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    # RFC 9112: status-code = 3DIGIT (ASCII; str.isdigit() also takes "³", which int() refuses)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not (len(parts[1]) == 3 and parts[1].isascii()
                                                                     and parts[1].isdigit()):
        raise HandshakeError(f"not an HTTP/1.1 response: {lines[0][:80]!r}")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HandshakeError(f"malformed response header {line[:80]!r}")
        headers.append((name.lower(), value.strip()))
    return ResponseHead(int(parts[1]), parts[2] if len(parts) > 2 else "", tuple(headers))


def check_upgrade(head: ResponseHead, accept: str | None) -> None:
    """Raise :class:`HandshakeError` unless *head* is a ``101`` upgrade to websocket."""
    if head.status != 101:
        raise HandshakeError(
            f"server answered {head.status} {head.reason} instead of 101 Switching Protocols"
        )
    if (head.get("upgrade") or "").lower() != "websocket" or not head.has_token("connection", "upgrade"):
        raise HandshakeError("101 response without Upgrade: websocket / Connection: Upgrade")
    if accept is not None and head.get("sec-websocket-accept") != accept:
        raise HandshakeError("wrong Sec-WebSocket-Accept in the 101 response")
