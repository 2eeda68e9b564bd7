"""HTTP proxy request parsing: targets, authorities, Basic credentials, hop-by-hop headers."""

from __future__ import annotations

import h11
import pytest
from tunray.net.address import Destination, Network, parse_host
from tunray_local.http import BadRequest, _clean, basic_auth, forward_target, parse_authority


def _req(target: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> h11.Request:
    return h11.Request(method=b"GET", target=target, headers=headers or [(b"host", b"h.test")])


def test_absolute_uri_becomes_origin_form() -> None:
    dest, path, host = forward_target(_req(b"http://a.test:8080/p?q=1"), False)
    assert dest == Destination(Network.TCP, "a.test", 8080) and path == b"/p?q=1" and host == b"a.test:8080"
    dest, path, _ = forward_target(_req(b"http://[fd00::2]"), False)
    assert dest == Destination(Network.TCP, parse_host("fd00::2"), 80) and path == b"/"


def test_origin_form_needs_allow_transparent() -> None:
    with pytest.raises(BadRequest):
        forward_target(_req(b"/x"), False)
    dest, path, _ = forward_target(_req(b"/x", [(b"host", b"t.test:81")]), True)
    assert dest == Destination(Network.TCP, "t.test", 81) and path == b"/x"


@pytest.mark.parametrize(("text", "want"), [("a.test:443", ("a.test", 443)), ("a.test", ("a.test", 80)), ("[::1]:8", ("::1", 8))])
def test_authority(text: str, want: tuple[str, int]) -> None:
    assert parse_authority(text, 80) == want


@pytest.mark.parametrize("text", ["", ":80", "a.test:99999", "[::1"])
def test_bad_authority(text: str) -> None:
    with pytest.raises(BadRequest):
        parse_authority(text, 80)


def test_basic_auth() -> None:
    assert basic_auth(b"Basic Ym9iOnB3") == ("bob", "pw")
    assert basic_auth(b"Basic !!!") is None and basic_auth(None) is None and basic_auth(b"Bearer x") is None


def test_hop_by_hop_and_connection_named_headers_are_dropped() -> None:
    headers = [(b"connection", b"keep-alive, x-private"), (b"x-private", b"1"), (b"proxy-connection", b"keep-alive"),
               (b"proxy-authorization", b"Basic x"), (b"accept", b"*/*"), (b"content-length", b"3")]
    assert _clean(headers) == [(b"accept", b"*/*"), (b"content-length", b"3")]
