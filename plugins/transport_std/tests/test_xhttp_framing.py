"""XHTTP's sans-IO core (paths, headers, padding, packet-up batching) and ``xhttpSettings`` validation."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tunray.config.errors import ConfigError
from tunray.config.model import STREAM_SCHEMA
from tunray_transports.settings import parse_range, xhttp_options
from tunray_transports.xhttpframe import (
    PacketBatcher,
    Range,
    XhttpOptions,
    normalise_path,
    request_headers,
    request_target,
    resolve_mode,
)

OPTS = XhttpOptions(path="/xh/", query="a=1", host="", headers=(("User-Agent", "ua"),), mode="packet-up")


def test_paths_and_targets() -> None:
    assert normalise_path("") == ("/", "")
    assert normalise_path("xh") == ("/xh/", "")
    assert normalise_path("/xh/?a=1&b=2") == ("/xh/", "a=1&b=2")
    assert request_target(OPTS) == "/xh/?a=1"
    assert request_target(OPTS, "sess") == "/xh/sess?a=1"
    assert request_target(OPTS, "sess", 7) == "/xh/sess/7?a=1"


def test_auto_mode_follows_current_xray() -> None:
    assert resolve_mode("auto", reality=True) == "stream-one"
    assert resolve_mode("auto", reality=False) == "packet-up"
    assert resolve_mode("", reality=False) == "packet-up"
    assert resolve_mode("stream-up", reality=True) == "stream-up"


def test_headers_carry_padding_in_the_referer_and_grpc_type_on_streams() -> None:
    rng = random.Random(1)
    h = dict(request_headers(OPTS, "POST", "/xh/s", "cdn.test", rng, streaming_body=True))
    assert h[b":method"] == b"POST" and h[b":path"] == b"/xh/s" and h[b":authority"] == b"cdn.test"
    assert h[b":scheme"] == b"https" and h[b"user-agent"] == b"ua"
    referer = h[b"referer"].decode()
    assert referer.startswith("https://cdn.test/xh/?x_padding=")
    padding = referer.split("=", 1)[1]
    assert set(padding) == {"X"} and 100 <= len(padding) <= 1000
    assert h[b"content-type"] == b"application/grpc"
    no_grpc = XhttpOptions(OPTS.path, OPTS.query, OPTS.host, OPTS.headers, OPTS.mode, no_grpc_header=True)
    assert b"content-type" not in dict(request_headers(no_grpc, "POST", "/xh/s", "a", rng, streaming_body=True))
    assert b"content-type" not in dict(request_headers(OPTS, "GET", "/xh/s", "a", rng))


def test_batcher_spaces_posts_and_caps_their_size() -> None:
    b = PacketBatcher(Range(1000, 1000), Range(30, 30), random.Random(0))
    assert b.next_timer(0.0) is None and b.next_post(0.0) is None
    b.feed(b"a" * 2500)
    assert b.next_timer(5.0) == 5.0  # the first POST goes at once
    assert b.next_post(5.0) == (0, b"a" * 1000)
    assert b.next_timer(5.001) == pytest.approx(5.030)
    assert b.next_post(5.02) is None  # too early
    assert b.next_post(5.031) == (1, b"a" * 1000)
    assert b.next_post(5.05) is None
    assert b.next_post(5.07) == (2, b"a" * 500)
    assert b.pending == 0 and b.next_timer(6.0) is None


@given(st.lists(st.binary(min_size=1, max_size=3000), max_size=20), st.integers(1, 4000))
def test_batcher_keeps_every_byte_in_order(writes: list[bytes], max_post: int) -> None:
    b = PacketBatcher(Range(max_post, max_post), Range(0, 0), random.Random(0))
    out: list[bytes] = []
    seqs: list[int] = []
    now = 0.0
    for w in writes:
        b.feed(w)
        while (post := b.next_post(now)) is not None:
            seqs.append(post[0])
            assert 0 < len(post[1]) <= max_post
            out.append(post[1])
            now += 0.001
    assert b"".join(out) == b"".join(writes)
    assert seqs == list(range(len(seqs)))


def test_ranges() -> None:
    d = Range(1, 2)
    assert parse_range(None, "p", d) is d and parse_range(0, "p", d) is d
    assert parse_range(5, "p", d) == Range(5, 5)
    assert parse_range("100-1000", "p", d) == Range(100, 1000)
    assert parse_range({"from": 3, "to": 9}, "p", d) == Range(3, 9)
    for bad in ("9-3", "x", True, [1], {"from": "a", "to": 2}):
        with pytest.raises(ConfigError):
            parse_range(bad, "p", d)


def _stream(security: str = "tls", **xhttp: Any) -> Any:
    raw: dict[str, Any] = {"network": "xhttp", "security": security, "xhttpSettings": xhttp}
    if security == "tls":
        raw["tlsSettings"] = {"serverName": "tls.test"}
    if security == "reality":
        raw["realitySettings"] = {"serverName": "reality.test"}
    return STREAM_SCHEMA.parse(raw, "streamSettings")


def test_options_defaults_and_host() -> None:
    opts, mode = xhttp_options(_stream(path="/p"), "streamSettings")
    assert (opts.path, mode, opts.host) == ("/p/", "packet-up", "tls.test")
    assert opts.padding == Range(100, 1000) and opts.max_post == Range(1_000_000, 1_000_000)
    assert opts.min_interval_ms == Range(30, 30)
    opts, mode = xhttp_options(_stream("reality"), "streamSettings")
    assert (mode, opts.host) == ("stream-one", "reality.test")
    opts, _ = xhttp_options(_stream(host="h.test", mode="stream-up"), "streamSettings")
    assert opts.host == "h.test"


@pytest.mark.parametrize(
    ("security", "xhttp", "extra", "path", "message"),
    [
        ("tls", {"xmux": {"maxConcurrency": 2}}, {}, "xhttpSettings.xmux", "not supported"),
        ("tls", {"downloadSettings": {"address": "a"}}, {}, "xhttpSettings.downloadSettings", "not supported"),
        ("tls", {"extra": {"a": 1}}, {}, "xhttpSettings.extra", "not supported"),
        ("tls", {"mode": "stream-down"}, {}, "xhttpSettings.mode", ""),
        ("tls", {"headers": {"Host": "x"}}, {}, "xhttpSettings.headers.Host", "host"),
        ("tls", {"uplinkHTTPMethod": "PUT"}, {}, "xhttpSettings.uplinkHTTPMethod", "not supported"),
        ("tls", {}, {"alpn": ["h3"]}, "tlsSettings.alpn", "HTTP/3"),
        ("tls", {"xPaddingBytes": "0-5"}, {}, "xhttpSettings.xPaddingBytes", "at least 1"),
    ],
)
def test_refusals_name_the_path(security: str, xhttp: dict[str, Any], extra: dict[str, Any], path: str, message: str) -> None:
    raw: dict[str, Any] = {"network": "xhttp", "security": security, "xhttpSettings": xhttp}
    if security == "tls":
        raw["tlsSettings"] = {"serverName": "tls.test", **extra}
    with pytest.raises(ConfigError) as err:
        xhttp_options(STREAM_SCHEMA.parse(raw, "streamSettings"), "streamSettings")
    assert err.value.path == f"streamSettings.{path}"
    assert message in str(err.value)


def test_http_version_follows_xray() -> None:
    def opts(security: str, alpn: list[str] | None) -> XhttpOptions:
        raw: dict[str, Any] = {"network": "xhttp", "security": security}
        if alpn is not None:
            raw["tlsSettings"] = {"alpn": alpn}
        return xhttp_options(STREAM_SCHEMA.parse(raw, "streamSettings"), "streamSettings")[0]

    assert opts("none", None).http1 and opts("none", None).scheme == "http"
    assert opts("tls", ["http/1.1"]).http1
    assert not opts("tls", None).http1 and not opts("tls", ["h2", "http/1.1"]).http1
    assert not opts("reality", None).http1 and opts("reality", None).scheme == "https"


def test_splithttp_spelling() -> None:
    raw = {"network": "splithttp", "security": "tls", "splithttpSettings": {"path": "/old"}}
    opts, _ = xhttp_options(STREAM_SCHEMA.parse(raw, "streamSettings"), "streamSettings")
    assert opts.path == "/old/"
