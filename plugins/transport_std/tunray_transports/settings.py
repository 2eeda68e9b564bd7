"""The ``wsSettings`` / ``httpupgradeSettings`` / ``grpcSettings`` objects of ``streamSettings``.

The core keeps these objects raw; each layer parses its own with the schemas here at
config time (``validate``) and again when it is built, turning them into small frozen
option records the data path reads without lookups.

Xray facts mirrored here:

* ``path`` is normalised to start with ``/``; a ``?ed=N`` query parameter is removed from
  the path and becomes the early-data budget ``N`` (other query parameters stay).
* The HTTP ``Host`` is ``host`` > ``tlsSettings.serverName`` > the server address.  For
  WebSocket a ``Host`` inside ``headers`` is the deprecated spelling of ``host``; for
  HTTPUpgrade it is an error.
* gRPC's method path is ``/<serviceName>/Tun`` (``/TunMulti`` with ``multiMode``), the
  plain service name URL-path-escaped; a ``serviceName`` starting with ``/`` is a custom
  path ``/a/b/Tun`` whose last segment names the stream (``Tun|TunMulti`` on a server:
  a client takes the part before ``|`` for Tun, the part after it for TunMulti).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

from tunray.config.errors import ConfigError, NotSupported, join
from tunray.config.schema import AnyValue, Bool, Enum, Field, Int, MapOf, Schema, Settings, Str, Unsupported
from tunray.net.address import Destination

from tunray_transports.xhttpframe import Range, XhttpOptions, normalise_path, resolve_mode

# The User-Agent Xray sends by default on WebSocket/HTTPUpgrade (a current desktop Chrome).
DEFAULT_USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/138.0.0.0 Safari/537.36"
)

WS_SCHEMA = Schema(
    Field("path", Str(), default="/", doc="HTTP path; ?ed=N enables N bytes of early data"),
    Field("host", Str(), default="", doc="HTTP Host (default: tls serverName, then the address)"),
    Field("headers", MapOf(Str()), default={}, doc="extra request headers"),
    Field("heartbeatPeriod", Int(min=0), default=0, doc="seconds between pings (0 = off)"),
    Field("acceptProxyProtocol", Bool(), default=False, doc="inbound only; ignored by clients"),
)

HTTPUPGRADE_SCHEMA = Schema(
    Field("path", Str(), default="/", doc="HTTP path; ?ed=N sends data before the 101 arrives"),
    Field("host", Str(), default="", doc="HTTP Host (default: tls serverName, then the address)"),
    Field("headers", MapOf(Str()), default={}, doc="extra request headers (not Host)"),
    Field("acceptProxyProtocol", Bool(), default=False, doc="inbound only; ignored by clients"),
)

GRPC_SCHEMA = Schema(
    Field("serviceName", Str(), default="", doc='service name, or a custom path "/a/b/Tun"'),
    Field("authority", Str(), default="", doc=":authority (default: tls serverName, then the address)"),
    Field("multiMode", Bool(), default=False, doc="use TunMulti (MultiHunk messages)"),
    Field("idle_timeout", Int(min=0), default=0, doc="seconds of silence before a keepalive PING (0 = off)"),
    Field("health_check_timeout", Int(min=0), default=0, doc="seconds to wait for the PING ack"),
    Field("permit_without_stream", Bool(), default=False, doc="accepted; one stream per connection here"),
    Field("initial_windows_size", Int(min=0), default=0, doc="HTTP/2 receive window (0 = 1 MiB)"),
    Field("user_agent", Str(), default="", doc="user-agent header (default: none)"),
    Unsupported("serviceNames", "grpcSettings.serviceNames"),
)


def raw_key(stream: Settings, *names: str) -> str:
    """The spelling the user wrote for a ``streamSettings`` key (for error paths)."""
    raw = stream.raw if isinstance(stream.raw, dict) else {}
    lowered = {n.lower() for n in names}
    for key in raw:
        if str(key).lower() in lowered:
            return str(key)
    return names[0]


def _lookup(obj: Any, key: str) -> Any:
    if not isinstance(obj, dict):
        return None
    for k, v in obj.items():
        if str(k).lower() == key.lower():
            return v
    return None


def tls_server_name(stream: Settings) -> str:
    """``tlsSettings.serverName`` when security is tls, else ""."""
    if str(stream.get("security", "")).lower() != "tls":
        return ""
    name = _lookup(stream.get("tlsSettings"), "serverName")
    return name if isinstance(name, str) else ""


def split_early_data(path: str, where: str) -> tuple[str, int]:
    """``"/p?ed=2048&x=1"`` -> ``("/p?x=1", 2048)``; the path always starts with ``/``."""
    if not path:
        path = "/"
    elif not path.startswith("/"):
        path = "/" + path
    base, sep, query = path.partition("?")
    if not sep:
        return path, 0
    ed = 0
    kept: list[str] = []
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if urllib.parse.unquote_plus(name) == "ed":
            text = urllib.parse.unquote_plus(value)
            if not text.isdigit():
                raise ConfigError(where, f"?ed= must be a non-negative integer, got {text!r}")
            ed = int(text)
        elif part:
            kept.append(part)
    return (base + "?" + "&".join(kept)) if kept else base, ed


@dataclass(frozen=True, slots=True)
class HttpOptions:
    """What a WebSocket or HTTPUpgrade client needs, precomputed."""

    path: str  # request target, ``ed`` removed
    early_data: int  # bytes of early data allowed (0 = off)
    host: str  # configured Host, "" = the server address
    headers: tuple[tuple[str, str], ...]  # extra headers, in config order, Host removed
    heartbeat: int = 0

    def host_for(self, dest: Destination) -> str:
        if self.host:
            return self.host
        return f"[{dest.host}]" if dest.is_ip and ":" in dest.host_text else dest.host_text


def _http_options(
    stream: Settings, key: str, schema: Schema, path: str, *, host_in_headers: bool
) -> HttpOptions:
    where = join(path, raw_key(stream, key))
    s = schema.parse(stream.get(key), where)
    clean, ed = split_early_data(s.path, join(where, "path"))
    host: str = s.host
    headers: list[tuple[str, str]] = []
    has_ua = False
    for name, value in s.headers.items():
        if name.lower() == "host":
            if not host_in_headers:
                raise ConfigError(join(join(where, "headers"), name), 'Host goes in "host", not in headers')
            host = host or value  # the deprecated spelling of "host"
            continue
        has_ua = has_ua or name.lower() == "user-agent"
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value or ":" in name:
            raise ConfigError(
                join(join(where, "headers"), name), "header names and values may not contain newlines"
            )
        headers.append((name, value))
    if not has_ua:
        headers.append(("User-Agent", DEFAULT_USER_AGENT))
    host = host or tls_server_name(stream)
    return HttpOptions(clean, ed, host, tuple(headers), s.get("heartbeatPeriod", 0))


def ws_options(stream: Settings, path: str) -> HttpOptions:
    return _http_options(stream, "wsSettings", WS_SCHEMA, path, host_in_headers=True)


def httpupgrade_options(stream: Settings, path: str) -> HttpOptions:
    return _http_options(stream, "httpupgradeSettings", HTTPUPGRADE_SCHEMA, path, host_in_headers=False)


@dataclass(frozen=True, slots=True)
class GrpcOptions:
    method_path: str  # "/<service>/<Tun|TunMulti|custom>"
    multi: bool
    authority: str  # "" = the server address
    user_agent: str
    idle_timeout: int
    health_check_timeout: int
    window: int

    def authority_for(self, dest: Destination) -> str:
        """Xray: ``authority`` > tls serverName > a domain address > grpc-go's ``host:port``."""
        if self.authority:
            return self.authority
        return dest.domain or dest.netloc


def grpc_method_path(service_name: str, multi: bool, where: str) -> str:
    if not service_name.startswith("/"):
        stream = "TunMulti" if multi else "Tun"
        return "/" + urllib.parse.quote(service_name, safe="") + "/" + stream
    last = service_name.rfind("/")
    service = service_name[1:last]
    names = service_name[last + 1 :].split("|")
    stream = names[1] if multi and len(names) > 1 else names[0]
    if not service or not stream:
        raise ConfigError(where, f'a custom path must look like "/service/Tun", got {service_name!r}')
    return "/" + service + "/" + stream


def grpc_options(stream: Settings, path: str) -> GrpcOptions:
    where = join(path, raw_key(stream, "grpcSettings", "gunSettings"))
    s = GRPC_SCHEMA.parse(stream.get("grpcSettings"), where)
    method = grpc_method_path(s.serviceName, s.multiMode, join(where, "serviceName"))
    if any(c in s.user_agent for c in "\r\n"):
        raise ConfigError(join(where, "user_agent"), "may not contain newlines")
    authority = s.authority or tls_server_name(stream)
    return GrpcOptions(
        method_path=method,
        multi=s.multiMode,
        authority=authority,
        user_agent=s.user_agent,
        idle_timeout=s.idle_timeout,
        health_check_timeout=s.health_check_timeout,
        window=s.initial_windows_size or (1 << 20),
    )


XHTTP_SCHEMA = Schema(
    Field("path", Str(), default="/", doc="HTTP path (a query is kept on every request)"),
    Field("host", Str(), default="", doc="HTTP authority (default: tls/reality serverName, then the address)"),
    Field("headers", MapOf(Str()), default={}, doc="extra request headers (not Host)"),
    Field("mode", Enum("auto", "packet-up", "stream-up", "stream-one"), default="auto", doc="how the uplink is carried"),
    Field("xPaddingBytes", AnyValue(), default=None, doc='padding length range, e.g. "100-1000" (the default)'),
    Field("scMaxEachPostBytes", AnyValue(), default=None, doc="packet-up: largest POST body (default 1000000)"),
    Field("scMinPostsIntervalMs", AnyValue(), default=None, doc="packet-up: least time between POSTs (default 30)"),
    Field("noGRPCHeader", Bool(), default=False, doc="no Content-Type: application/grpc on streaming POSTs"),
    Unsupported("xmux", "xhttpSettings.xmux (connection sharing)"),
    Unsupported("downloadSettings", "xhttpSettings.downloadSettings (split upload/download)"),
    Unsupported("extra", "xhttpSettings.extra"),
    Unsupported("uplinkHTTPMethod", "xhttpSettings.uplinkHTTPMethod other than POST", allow=lambda v: str(v).upper() == "POST"),
    Unsupported("xPaddingObfsMode", "xhttpSettings.xPaddingObfsMode"),
    Unsupported("xPaddingKey", "xhttpSettings.xPaddingKey"),
    Unsupported("xPaddingHeader", "xhttpSettings.xPaddingHeader"),
    Unsupported("xPaddingPlacement", "xhttpSettings.xPaddingPlacement"),
    Unsupported("xPaddingMethod", "xhttpSettings.xPaddingMethod", allow=lambda v: v == "repeat-x"),
    Unsupported("sessionPlacement", "xhttpSettings.sessionPlacement", allow=lambda v: v == "path"),
    Unsupported("sessionKey", "xhttpSettings.sessionKey"),
    Unsupported("seqPlacement", "xhttpSettings.seqPlacement", allow=lambda v: v == "path"),
    Unsupported("seqKey", "xhttpSettings.seqKey"),
    Unsupported("uplinkDataPlacement", "xhttpSettings.uplinkDataPlacement", allow=lambda v: v in ("auto", "body")),
    Unsupported("uplinkDataKey", "xhttpSettings.uplinkDataKey"),
    Unsupported("uplinkChunkSize", "xhttpSettings.uplinkChunkSize"),
    Unsupported("noSSEHeader", "xhttpSettings.noSSEHeader (a server setting)"),
    Unsupported("scMaxBufferedPosts", "xhttpSettings.scMaxBufferedPosts (a server setting)"),
    Unsupported("scStreamUpServerSecs", "xhttpSettings.scStreamUpServerSecs (a server setting)"),
    Unsupported("serverMaxHeaderBytes", "xhttpSettings.serverMaxHeaderBytes (a server setting)"),
    Unsupported("scMaxConcurrentPosts", "xhttpSettings.scMaxConcurrentPosts (removed from Xray)"),
)


def parse_range(value: Any, where: str, default: Range, *, minimum: int = 0) -> Range:
    """Xray's Int32Range: a number, ``"a-b"``, or ``{"from": a, "to": b}``; unset = *default*."""
    if value is None or value == "" or value == 0:
        return default
    lo: Any
    hi: Any
    if isinstance(value, bool):
        raise ConfigError(where, f"expected a number, \"a-b\" or {{from, to}}, got {value!r}")
    if isinstance(value, int):
        lo = hi = value
    elif isinstance(value, str):
        left, sep, right = value.strip().partition("-")
        if not left.strip().isdigit() or (sep and not right.strip().isdigit()):
            raise ConfigError(where, f'expected a number or "a-b", got {value!r}')
        lo, hi = int(left), int(right) if sep else int(left)
    elif isinstance(value, dict):
        lo, hi = value.get("from", 0), value.get("to", 0)
        if not isinstance(lo, int) or not isinstance(hi, int) or isinstance(lo, bool) or isinstance(hi, bool):
            raise ConfigError(where, f"from/to must be integers, got {value!r}")
        if hi == 0:
            return default
    else:
        raise ConfigError(where, f"expected a number, \"a-b\" or {{from, to}}, got {value!r}")
    if lo > hi:
        raise ConfigError(where, f"{lo} is above {hi}")
    if lo < minimum:
        raise ConfigError(where, f"must be at least {minimum}")
    return Range(lo, hi)


def reality_or_tls_server_name(stream: Settings) -> str:
    security = str(stream.get("security", "")).lower()
    if security == "reality":
        name = _lookup(stream.get("realitySettings"), "serverName")
        return name if isinstance(name, str) else ""
    return tls_server_name(stream)


def xhttp_options(stream: Settings, path: str) -> tuple[XhttpOptions, str]:
    """(options, resolved mode) for ``xhttpSettings`` (alias ``splithttpSettings``)."""
    where = join(path, raw_key(stream, "xhttpSettings", "splithttpSettings"))
    s = XHTTP_SCHEMA.parse(stream.get("xhttpSettings"), where)
    security = str(stream.get("security", "") or "none").lower()
    http1 = security in ("", "none")  # Xray: no TLS means HTTP/1.1
    if security == "tls":
        alpn = _lookup(stream.get("tlsSettings"), "alpn")
        names = [a.strip() for a in alpn.split(",")] if isinstance(alpn, str) else list(alpn or [])
        http1 = names == ["http/1.1"]
        if names == ["h3"]:
            raise NotSupported(join(path, "tlsSettings.alpn"), "XHTTP over HTTP/3 (QUIC)")
    base, query = normalise_path(s.path)
    headers: list[tuple[str, str]] = []
    has_ua = False
    for name, value in s.headers.items():
        hpath = join(join(where, "headers"), name)
        if name.lower() == "host":
            raise ConfigError(hpath, 'Host goes in "host", not in headers')
        if any(c in name + value for c in "\r\n") or ":" in name:
            raise ConfigError(hpath, "header names and values may not contain newlines or colons")
        has_ua = has_ua or name.lower() == "user-agent"
        headers.append((name, value))
    if not has_ua:
        headers.append(("User-Agent", DEFAULT_USER_AGENT))
    opts = XhttpOptions(
        path=base,
        query=query,
        host=s.host or reality_or_tls_server_name(stream),
        headers=tuple(headers),
        mode=s.mode,
        padding=parse_range(s.xPaddingBytes, join(where, "xPaddingBytes"), Range(100, 1000), minimum=1),
        max_post=parse_range(s.scMaxEachPostBytes, join(where, "scMaxEachPostBytes"), Range(1_000_000, 1_000_000), minimum=1),
        min_interval_ms=parse_range(s.scMinPostsIntervalMs, join(where, "scMinPostsIntervalMs"), Range(30, 30)),
        no_grpc_header=s.noGRPCHeader,
        scheme="http" if security in ("", "none") else "https",
        http1=http1,
    )
    return opts, resolve_mode(s.mode, security == "reality")
