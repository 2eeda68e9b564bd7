"""Xray's raw-TCP HTTP header obfuscation: config, request head, response skipping."""

from __future__ import annotations

import random

import pytest
from tunray.config.model import STREAM_SCHEMA
from tunray.net.httpheader import MAX_HEADER, HttpHeaderStream, RequestHead, skip_response
from tunray.testing.links import BytePipe


def _header(raw: dict) -> object:  # type: ignore[type-arg]
    return STREAM_SCHEMA.parse({"network": "tcp", "tcpSettings": {"header": raw}}, "s").rawSettings.header


def test_request_head_as_xray_forms_it() -> None:
    h = _header({"type": "http", "request": {"path": ["/a", "/b"], "headers": {"X-B": "2", "Host": ["h1", "h2"]}}})
    text = RequestHead(h.request).render(random.Random(1)).decode()  # type: ignore[attr-defined]
    lines = text.split("\r\n")
    assert lines[0] in ("GET /a HTTP/1.1", "GET /b HTTP/1.1")
    assert lines[1] in ("Host: h1", "Host: h2") and lines[2] == "X-B: 2"  # names sorted, one value each
    assert text.endswith("\r\n\r\n") and lines[3] == ""


def test_defaults_when_request_is_absent() -> None:
    text = RequestHead(_header({"type": "http"}).request).render().decode()  # type: ignore[attr-defined]
    assert text.startswith("GET / HTTP/1.1\r\nHost: www.") and "Connection: keep-alive\r\n" in text


def test_unknown_type_is_an_error_naming_the_path() -> None:
    from tunray.config.errors import ConfigError

    with pytest.raises(ConfigError, match=r"s\.tcpSettings\.header\.type"):
        _header({"type": "srtp"})


def test_response_skipping() -> None:
    assert skip_response(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nDATA") == len(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n")
    assert skip_response(b"HTTP/1.1 200 OK\r\n") is None
    with pytest.raises(ConnectionError):
        skip_response(b"x" * (MAX_HEADER + 1))


async def test_stream_writes_head_once_and_strips_the_response() -> None:
    up, down = BytePipe(), BytePipe()

    class Inner:
        async def write(self, data: bytes) -> None:
            await up.write(data)

        async def read(self, n: int = 65536) -> bytes:
            return await down.read(n)

    s = HttpHeaderStream(Inner(), b"GET / HTTP/1.1\r\n\r\n")
    await s.write(b"one")
    await s.write(b"two")
    assert await up.read() == b"GET / HTTP/1.1\r\n\r\nonetwo"  # the head once, before the first bytes
    await down.write(b"HTTP/1.1 200 OK\r\n")
    await down.write(b"\r\npayload")
    assert await s.read() == b"payload"
