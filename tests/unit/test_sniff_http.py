"""HTTP/1 sniffer: Xray's TestHTTPHeaders cases plus the edges of the header block."""

from __future__ import annotations

import pytest
from tunray.sniff import TCP_SNIFFERS, NeedMoreData, NoClue, SniffResult, sniff_http

# Xray-core common/protocol/http/sniff_test.go, verbatim requests (LF line endings).
UA = "User-Agent: Mozilla/5.0 (Windows; U; Windows NT 6.1; en-US; rv:1.9.1.5) Gecko/20091102 Firefox/3.5.5 (.NET CLR 3.5.30729)\n"
COMMON = (
    UA + "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\n"
    "Accept-Language: en-us,en;q=0.5\n"
    "Accept-Encoding: gzip,deflate\n"
    "Accept-Charset: ISO-8859-1,utf-8;q=0.7,*;q=0.7\n"
    "Keep-Alive: 300\n"
    "Connection: keep-alive\n"
)
XRAY_GET = (
    "GET /tutorials/other/top-20-mysql-best-practices/ HTTP/1.1\n"
    "Host: net.tutsplus.com\n" + COMMON + "Cookie: PHPSESSID=r2t5uvjq435r4q7ib3vtdjq120\n"
    "Pragma: no-cache\n"
    "Cache-Control: no-cache"
)
FORM = (
    "Referer: http://localhost/test.php\n"
    "Content-Type: application/x-www-form-urlencoded\n"
    "Content-Length: 43\n"
)
XRAY_POST = (
    "POST /foo.php HTTP/1.1\nHost: localhost\n"
    + COMMON
    + FORM
    + " \nfirst_name=John&last_name=Doe&action=Submit"
)
XRAY_BAD_METHOD = (
    "X /foo.php HTTP/1.1\nHost: localhost\n"
    + COMMON
    + FORM
    + " \nfirst_name=John&last_name=Doe&action=Submit"
)
XRAY_HOST_IN_BODY = (
    "GET /foo.php HTTP/1.1\n"
    + COMMON
    + FORM
    + "\nHost: localhost\nfirst_name=John&last_name=Doe&action=Submit"
)
XRAY_REQUEST_LINE_ONLY = "GET /tutorials/other/top-20-mysql-best-practices/ HTTP/1.1"


@pytest.mark.parametrize(
    ("request_text", "domain"),
    [(XRAY_GET, "net.tutsplus.com"), (XRAY_POST, "localhost")],
)
def test_xray_requests_with_host(request_text: str, domain: str) -> None:
    assert sniff_http(request_text.encode()) == SniffResult("http1", domain)


@pytest.mark.parametrize("request_text", [XRAY_BAD_METHOD, XRAY_HOST_IN_BODY])
def test_xray_requests_not_sniffable(request_text: str) -> None:
    with pytest.raises(NoClue):
        sniff_http(request_text.encode())


def test_xray_request_line_only_wants_more() -> None:
    with pytest.raises(NeedMoreData):
        sniff_http(XRAY_REQUEST_LINE_ONLY.encode())


@pytest.mark.parametrize("method", ["get", "POST", "Head", "put", "DELETE", "options", "CONNECT"])
def test_every_method_case_insensitive(method: str) -> None:
    data = f"{method} / HTTP/1.1\r\nHost: Example.ORG\r\n\r\n".encode()
    assert sniff_http(data).domain == "example.org"


@pytest.mark.parametrize("prefix", [b"", b"G", b"ge", b"PO", b"OPTIO", b"conne", b"D", b"h"])
def test_partial_method_needs_more(prefix: bytes) -> None:
    with pytest.raises(NeedMoreData):
        sniff_http(prefix)


@pytest.mark.parametrize("data", [b"X", b"\x16\x03\x01", b"PATCH / HTTP/1.1\r\nHost: a\r\n\r\n", b"GAT /"])
def test_non_methods_are_no_clue(data: bytes) -> None:
    with pytest.raises(NoClue):
        sniff_http(data)


@pytest.mark.parametrize(
    ("host", "domain"),
    [
        ("example.com:8080", "example.com"),
        ("EXAMPLE.com", "example.com"),
        ("  spaced.example \t", "spaced.example"),
        ("10.0.0.1:80", "10.0.0.1"),
        ("[2001:DB8::1]:443", "2001:db8::1"),
        ("[::1]", "::1"),
        ("example.com:", "example.com"),
    ],
)
def test_host_forms(host: str, domain: str) -> None:
    data = f"GET / HTTP/1.1\r\nHost:{host}\r\n\r\n".encode()
    assert sniff_http(data).domain == domain


@pytest.mark.parametrize(
    "host", ["", "a:b:c", "example.com:99999", "example.com:http", "[::1", "[nope]:1", "bad host"]
)
def test_malformed_host_is_no_clue(host: str) -> None:
    with pytest.raises(NoClue):
        sniff_http(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())


def test_host_line_must_be_complete() -> None:
    # A segment boundary inside the Host line must not yield a truncated name.
    with pytest.raises(NeedMoreData):
        sniff_http(b"GET / HTTP/1.1\r\nAccept: */*\r\nHost: www.exam")
    assert (
        sniff_http(b"GET / HTTP/1.1\r\nAccept: */*\r\nHost: www.example.com\r\n").domain == "www.example.com"
    )


def test_crlf_blank_line_ends_headers() -> None:
    with pytest.raises(NoClue):
        sniff_http(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\nHost: late.example\r\n")


def test_header_name_is_case_insensitive_but_exact() -> None:
    assert sniff_http(b"GET / HTTP/1.1\r\nhOsT: a.example\r\n\r\n").domain == "a.example"
    with pytest.raises(NoClue):
        sniff_http(b"GET / HTTP/1.1\r\nX-Host: a.example\r\nHosts: b\r\n\r\n")


def test_every_prefix_of_a_request_needs_more_or_succeeds() -> None:
    data = b"GET /index.html HTTP/1.1\r\nUser-Agent: t\r\nHost: www.example.net:8080\r\nAccept: */*\r\n\r\n"
    host_end = data.index(b"8080\r\n") + 6
    for n in range(len(data) + 1):
        if n < host_end:
            with pytest.raises(NeedMoreData):
                sniff_http(data[:n])
        else:
            assert sniff_http(data[:n]) == SniffResult("http1", "www.example.net")


def test_registered_as_tcp_sniffer() -> None:
    assert TCP_SNIFFERS["http"] is sniff_http
