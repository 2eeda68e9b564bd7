"""HTTP/1.x sniffer: the ``Host`` header of a request's header block.

The request must start with one of Xray's seven methods (case-insensitive prefix match, as
Xray does).  Only complete lines (ending in ``\\n``) are read, so a ``Host`` line cut short
by a segment boundary is never reported; the first blank line ends the header block.
"""

from __future__ import annotations

import ipaddress

from tunray.sniff.result import NeedMoreData, NoClue, SniffResult

PROTOCOL = "http1"

_METHODS = (b"get", b"post", b"head", b"put", b"delete", b"options", b"connect")
_LONGEST_METHOD = max(len(m) for m in _METHODS)


def _check_method(data: bytes) -> None:
    head = data[:_LONGEST_METHOD].lower()
    if any(head.startswith(m) for m in _METHODS):
        return
    if any(m.startswith(head) for m in _METHODS):  # "", "GE", "opt", ...
        raise NeedMoreData("partial HTTP method")
    raise NoClue("not an HTTP method")


def _valid_port(text: str) -> bool:
    return text == "" or (text.isascii() and text.isdigit() and len(text) <= 5 and int(text) <= 65535)


def parse_host_header(value: bytes) -> str:
    """Return the host of a ``Host`` header value (lower-case, port dropped, IPv6 unbracketed).

    Raises :class:`NoClue` for an empty or malformed value.
    """
    try:
        text = value.strip(b" \t").decode("ascii").lower()
    except UnicodeDecodeError:
        raise NoClue("non-ASCII Host") from None
    if text.startswith("["):
        inner, bracket, port = text[1:].partition("]")
        if not bracket or not (port == "" or (port[0] == ":" and _valid_port(port[1:]))):
            raise NoClue("malformed bracketed Host")
        try:
            return str(ipaddress.IPv6Address(inner))
        except ValueError:
            raise NoClue("bad IPv6 literal in Host") from None
    host, _, port = text.partition(":")
    if not host or ":" in port or not _valid_port(port):
        raise NoClue("malformed Host")
    if any(c <= " " or c == "\x7f" for c in host):
        raise NoClue("control character in Host")
    return host


def sniff_http(data: bytes) -> SniffResult:
    """Sniff an HTTP/1.x request; see the module docstring."""
    _check_method(data)
    lines = data.split(b"\n")
    # lines[0] is the request line; lines[-1] is unterminated (or empty): skip both.
    for line in lines[1:-1]:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            raise NoClue("HTTP header block has no Host")
        name, colon, value = line.partition(b":")
        if colon and name.lower() == b"host":
            return SniffResult(PROTOCOL, parse_host_header(value))
    raise NeedMoreData("HTTP header block incomplete")
