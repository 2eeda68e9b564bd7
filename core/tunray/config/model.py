"""The top-level Xray config, validated as a whole before anything is opened.

``build_config(raw, registry)`` checks every section against its schema and every
``protocol`` against the plugin registry, so ``tunray run -test`` catches what a run
would, and returns a :class:`Config` that the runtime turns into objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunray.config.errors import ConfigError, NotSupported, join
from tunray.config.schema import (
    AnyValue,
    Bool,
    Enum,
    Field,
    Int,
    ListOf,
    MapOf,
    OneOf,
    Schema,
    Settings,
    Str,
    Unsupported,
    expected,
)
from tunray.net.sockopt import SOCKOPT_SCHEMA
from tunray.plugin.registry import Registry

LOG_LEVELS = ("debug", "info", "warning", "error", "none")

LOG_SCHEMA = Schema(
    Field("loglevel", Enum(*LOG_LEVELS), default="warning", doc="error-log verbosity"),
    Field("access", Str(), default="", doc='access-log file; "" = stdout, "none" = off'),
    Field("error", Str(), default="", doc='error-log file; "" = stderr, "none" = off'),
    Unsupported("dnsLog", "log.dnsLog (DNS query log)"),
    Unsupported("maskAddress", "log.maskAddress"),
)

LEVEL_SCHEMA = Schema(
    Field("handshake", Int(min=0), default=4, doc="seconds to finish a handshake"),
    Field("connIdle", Int(min=0), default=300, doc="seconds a flow may sit idle"),
    Field("uplinkOnly", Int(min=0), default=2, doc="seconds to wait after the downlink closed"),
    Field("downlinkOnly", Int(min=0), default=5, doc="seconds to wait after the uplink closed"),
    Field("bufferSize", Int(min=-1), default=-1, doc="per-flow buffer in KiB (-1 = default)"),
    Unsupported("statsUserUplink", "per-user traffic counters (statsUserUplink)"),
    Unsupported("statsUserDownlink", "per-user traffic counters (statsUserDownlink)"),
    Unsupported("statsUserOnline", "per-user online tracking (statsUserOnline)"),
)

SYSTEM_POLICY_SCHEMA = Schema(
    Field("statsInboundUplink", Bool(), default=False),
    Field("statsInboundDownlink", Bool(), default=False),
    Field("statsOutboundUplink", Bool(), default=False),
    Field("statsOutboundDownlink", Bool(), default=False),
)

POLICY_SCHEMA = Schema(
    Field("levels", MapOf(LEVEL_SCHEMA), default={}, doc="policy per user level"),
    Field("system", SYSTEM_POLICY_SCHEMA, default=None),
)

SNIFF_PROTOCOLS = ("http", "tls", "quic", "fakedns", "fakedns+others")

SNIFFING_SCHEMA = Schema(
    Field("enabled", Bool(), default=False),
    Field(
        "destOverride",
        ListOf(Enum("http", "tls", "quic", "fakedns", aliases={"https": "tls", "ssl": "tls", "fakedns+others": "fakedns"})),
        default=[],
    ),
    Field("domainsExcluded", ListOf(Str()), default=[]),
    Field("ipsExcluded", ListOf(Str()), default=[]),
    Field("metadataOnly", Bool(), default=False),
    Field("routeOnly", Bool(), default=False),
)

PORT = OneOf((Int(min=0, max=65535), Str()))

def _check_header(s: Settings, path: str) -> None:
    Enum("none", "http").parse(s.type, join(path, "type"))


_HEADER_VALUES = MapOf(ListOf(Str(), allow_single=True))

#: ``rawSettings.header``: ``none``, or Xray's HTTP header obfuscation (tunray.net.httpheader).
RAW_HEADER_SCHEMA = Schema(
    Field("type", Str(), default="none", doc='"none" or "http"'),
    Field(
        "request",
        Schema(
            Field("version", Str(), default="", doc='HTTP version (default "1.1")'),
            Field("method", Str(), default="", doc='request method (default "GET")'),
            Field("path", ListOf(Str(), allow_single=True), default=None, doc="paths, one picked per connection"),
            Field("headers", _HEADER_VALUES, default=None, doc="header values, one picked per connection"),
        ),
        default=None,
        doc="the request head the client sends first",
    ),
    Field(
        "response",
        Schema(
            Field("version", Str(), default=""),
            Field("status", Str(), default=""),
            Field("reason", Str(), default=""),
            Field("headers", _HEADER_VALUES, default=None),
        ),
        default=None,
        doc="the server's response head (server side; a client reads any response head)",
    ),
    check=_check_header,
)


RAW_SCHEMA = Schema(
    Field("header", RAW_HEADER_SCHEMA, default=None, doc='obfuscation header: {"type": "none" | "http", ...}'),
    Field("acceptProxyProtocol", Bool(), default=False, doc="server side only (PROXY protocol)"),
)

STREAM_SCHEMA = Schema(
    Field("network", Str(), default="raw", aliases=("method",)),
    Field("security", Str(), default="none"),
    Field("sockopt", SOCKOPT_SCHEMA, default=None),
    # Per-transport and per-security settings are validated by the transport plugin
    # named in network/security; they are kept raw here.
    Field("tlsSettings", AnyValue(), default=None),
    Field("realitySettings", AnyValue(), default=None),
    Field("rawSettings", RAW_SCHEMA, default=None, aliases=("tcpSettings",)),
    Field("wsSettings", AnyValue(), default=None),
    Field("httpupgradeSettings", AnyValue(), default=None),
    Field("grpcSettings", AnyValue(), default=None, aliases=("gunSettings",)),
    Field("xhttpSettings", AnyValue(), default=None, aliases=("splithttpSettings",)),
    Field("kcpSettings", AnyValue(), default=None),
    Field("quicSettings", AnyValue(), default=None),
    Field("dsSettings", AnyValue(), default=None),
    Field("httpSettings", AnyValue(), default=None),
    Unsupported("finalmask", "streamSettings.finalmask"),
)

RAW_NETWORKS = {"raw": "raw", "tcp": "raw"}
NO_SECURITY = {"", "none"}


@dataclass
class StreamConfig:
    network: str
    security: str
    settings: Settings
    transport: Any = None  # the registered transport class, None for raw
    security_layer: Any = None  # the registered security class, None for none


@dataclass
class InboundConfig:
    tag: str
    protocol: str
    settings: Settings
    cls: Any
    path: str
    listen: str = ""
    port: Any = None
    sniffing: Settings = field(default_factory=lambda: SNIFFING_SCHEMA.parse({}, ""))
    stream: StreamConfig | None = None


@dataclass
class OutboundConfig:
    tag: str
    protocol: str
    settings: Settings
    cls: Any
    path: str
    stream: StreamConfig | None = None
    send_through: str = ""
    target_strategy: str = ""


@dataclass
class Config:
    raw: dict[str, Any]
    log: Settings
    policy: Settings
    inbounds: list[InboundConfig]
    outbounds: list[OutboundConfig]
    routing_raw: Any
    dns_raw: Any
    stats_enabled: bool
    extra: dict[str, Settings] = field(default_factory=dict)
    router: Any = None  # validated Router, set by build_config
    resolver: Any = None

    def level(self, level: int) -> Settings:
        levels: dict[str, Settings] = self.policy.levels
        return levels.get(str(level)) or LEVEL_SCHEMA.parse({}, "")

    def outbound(self, tag: str) -> OutboundConfig | None:
        for ob in self.outbounds:
            if ob.tag == tag:
                return ob
        return None


TOP_LEVEL = {
    "log",
    "inbounds",
    "outbounds",
    "routing",
    "policy",
    "dns",
    "stats",
    "fakedns",
}
# Sections Xray knows that tunray does not implement: present and non-empty => error.
UNSUPPORTED_TOP = {
    "api": "the api section",
    "reverse": "the reverse section (reverse proxy)",
    "observatory": "the observatory section",
    "burstobservatory": "the burstObservatory section",
    "metrics": "the metrics section",
    "transport": "the global transport section",
    "version": None,  # Xray's min/max check of its own version: said, not applied (below)
}


def _get(raw: dict[str, Any], key: str) -> tuple[str, Any]:
    for k, v in raw.items():
        if k.lower() == key.lower():
            return k, v
    return key, None


def _stream(raw: Any, path: str, registry: Registry) -> StreamConfig | None:
    if raw is None:
        return None
    settings = STREAM_SCHEMA.parse(raw, path)
    network = settings.network.lower()
    network = RAW_NETWORKS.get(network, network)
    transport = None
    if network != "raw":
        transport = registry.transport(network)
        if transport is None:
            raise NotSupported(join(path, "network"), f"transport {settings.network!r}")
        transport.validate(settings, path)
    security = settings.security.lower()
    layer = None
    if security not in NO_SECURITY:
        layer = registry.transport("security:" + security)
        if layer is None:
            raise NotSupported(join(path, "security"), f"security {settings.security!r}")
        layer.validate(settings, path)
    return StreamConfig(network, security if security not in NO_SECURITY else "none", settings, transport, layer)


def _list(raw: dict[str, Any], key: str) -> tuple[str, list[Any]]:
    k, value = _get(raw, key)
    if value is None:
        return k, []
    if not isinstance(value, list):
        raise expected(k, "an array", value)
    return k, value


#: Xray's other names for outbound protocols (infra/conf/xray.go outboundConfigLoader).
OUTBOUND_ALIASES = {"direct": "freedom", "block": "blackhole"}


def _protocol_entry(
    item: Any, path: str, table: dict[str, Any], example: str, aliases: dict[str, str] | None = None
) -> tuple[str, Any, str]:
    """Common prologue of an inbound/outbound entry: (protocol, registered class, tag)."""
    aliases = aliases or {}
    if not isinstance(item, dict):
        raise expected(path, "an object", item)
    _, protocol = _get(item, "protocol")
    if not isinstance(protocol, str) or not protocol:
        raise ConfigError(join(path, "protocol"), f'is required (a protocol name such as "{example}")')
    cls = table.get(protocol.lower())
    if cls is None and protocol.lower() in aliases:
        cls = table.get(aliases[protocol.lower()])
    if cls is None:
        raise ConfigError(
            join(path, "protocol"),
            f"unknown protocol {protocol!r}: no installed plugin provides it "
            f"(known: {', '.join(sorted(table)) or 'none'})",
        )
    _, tag = _get(item, "tag")
    if tag is not None and not isinstance(tag, str):
        raise expected(join(path, "tag"), "a string", tag)
    return cls.protocol if protocol.lower() in aliases else protocol.lower(), cls, tag or ""


def _inbound(item: Any, path: str, registry: Registry) -> InboundConfig:
    protocol, cls, tag = _protocol_entry(item, path, registry.inbounds, "tun")
    _, port = _get(item, "port")
    _, listen = _get(item, "listen")
    unix = isinstance(listen, str) and listen.startswith(("/", "@"))
    if cls.needs_listen and not unix:
        if port is None:
            raise ConfigError(join(path, "port"), "is required for this protocol")
        PORT.parse(port, join(path, "port"))
    if listen is not None and not isinstance(listen, str):
        raise expected(join(path, "listen"), "an IP address or a Unix socket path", listen)
    check_listen = getattr(cls, "check_listen", None)
    if check_listen is not None:
        check_listen(listen or "", port, path)
    for key in ("allocate",):
        _, v = _get(item, key)
        if v:
            raise NotSupported(join(path, key), f"inbound {key!r}")
    settings = cls.settings_schema.parse(_get(item, "settings")[1], join(path, "settings"))
    sniff_key, sniff = _get(item, "sniffing")
    sniffing = SNIFFING_SCHEMA.parse(sniff, join(path, sniff_key))
    stream_key, stream_raw = _get(item, "streamSettings")
    stream = _stream(stream_raw, join(path, stream_key), registry)
    cls.validate_config(settings, join(path, "settings"), registry, stream)
    return InboundConfig(
        tag=tag,
        protocol=protocol,
        settings=settings,
        cls=cls,
        path=path,
        listen=listen or "",
        port=port,
        sniffing=sniffing,
        stream=stream,
    )


def _outbound(item: Any, path: str, registry: Registry) -> OutboundConfig:
    protocol, cls, tag = _protocol_entry(item, path, registry.outbounds, "freedom", OUTBOUND_ALIASES)
    for key, what in (("proxySettings", "outbound proxySettings (chaining)"), ("mux", "mux")):
        k, v = _get(item, key)
        if isinstance(v, dict) and key == "mux" and not v.get("enabled"):
            continue
        if v:
            raise NotSupported(join(path, k), what)
    settings = cls.settings_schema.parse(_get(item, "settings")[1], join(path, "settings"))
    stream_key, stream_raw = _get(item, "streamSettings")
    stream = _stream(stream_raw, join(path, stream_key), registry)
    cls.validate_config(settings, join(path, "settings"), registry, stream)
    st_key, send_through = _get(item, "sendThrough")
    if send_through is not None and not isinstance(send_through, str):
        raise expected(join(path, st_key), "an IP address string", send_through)
    ts_key, target_strategy = _get(item, "targetStrategy")
    if target_strategy is not None:
        from tunray.net.dialer import STRATEGIES

        target_strategy = STRATEGIES.parse(target_strategy, join(path, ts_key))
    return OutboundConfig(
        tag=tag,
        protocol=protocol,
        settings=settings,
        cls=cls,
        path=path,
        stream=stream,
        send_through=send_through or "",
        target_strategy=target_strategy or "",
    )


def _unique_tags(items: list[Any], key: str) -> None:
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.tag and item.tag in seen:
            raise ConfigError(join(join(key, i), "tag"), f"duplicate tag {item.tag!r} (also {key}[{seen[item.tag]}])")
        seen[item.tag] = i


def build_config(raw: dict[str, Any], registry: Registry) -> Config:
    """Validate the whole merged config; raise :class:`ConfigError` at the first mistake."""
    from tunray.dns import Resolver
    from tunray.routing.router import Router

    for key, value in raw.items():
        low = key.lower()
        if low in TOP_LEVEL or low in {s.lower() for s in registry.sections}:
            continue
        from loguru import logger

        if low in UNSUPPORTED_TOP:
            if UNSUPPORTED_TOP[low] and value:
                raise NotSupported(key, str(UNSUPPORTED_TOP[low]))
            if low == "version" and value:
                logger.warning("config: {}: Xray's version check does not apply to tunray; not checked", key)
            continue

        logger.warning("config: {}: unknown top-level section ignored", key)

    log_key, log_raw = _get(raw, "log")
    log = LOG_SCHEMA.parse(log_raw, log_key)
    pol_key, pol_raw = _get(raw, "policy")
    policy = POLICY_SCHEMA.parse(pol_raw, pol_key)
    for level in policy.levels:
        if not level.isdigit():
            raise ConfigError(join(join(pol_key, "levels"), level), "level keys must be numbers like \"0\"")

    ib_key, ib_list = _list(raw, "inbounds")
    inbounds = [_inbound(item, join(ib_key, i), registry) for i, item in enumerate(ib_list)]
    _unique_tags(inbounds, ib_key)
    ob_key, ob_list = _list(raw, "outbounds")
    outbounds = [_outbound(item, join(ob_key, i), registry) for i, item in enumerate(ob_list)]
    _unique_tags(outbounds, ob_key)

    extra: dict[str, Settings] = {}
    for name, schema in registry.sections.items():
        k, v = _get(raw, name)
        extra[name] = schema.parse(v, k)

    from tunray.dns.fakedns import FakeDNS

    fake_key, fake_raw = _get(raw, "fakedns")
    fakedns = FakeDNS.from_config(fake_raw, fake_key) if fake_raw else None
    dns_key, dns_raw = _get(raw, "dns")
    resolver = Resolver.from_config(dns_raw, dns_key, fakedns=fakedns)
    if any(s.kind == "fakedns" for s in resolver.servers) and not any(
        ib.sniffing.enabled and "fakedns" in ib.sniffing.destOverride for ib in inbounds
    ):
        from loguru import logger

        # Xray warns the same: fake addresses handed out but never turned back into names
        logger.warning("config: {}: a fakedns server without any inbound sniffing destOverride \"fakedns\"", dns_key)
    routing_key, routing_raw = _get(raw, "routing")
    router = Router.from_config(
        routing_raw, routing_key, outbound_tags=[o.tag for o in outbounds if o.tag], resolver=resolver
    )
    stats_key, stats_raw = _get(raw, "stats")
    if stats_raw is not None and not isinstance(stats_raw, dict):
        raise expected(stats_key, "an object", stats_raw)
    return Config(
        raw=raw,
        log=log,
        policy=policy,
        inbounds=inbounds,
        outbounds=outbounds,
        routing_raw=routing_raw,
        dns_raw=dns_raw,
        stats_enabled=stats_raw is not None,
        extra=extra,
        router=router,
        resolver=resolver,
    )
