"""Xray's ``dns`` section: static hosts, name servers with domain lists, and a cache.

Theory of operation
-------------------
``lookup(domain, strategy)`` answers, in order:

1. an IP literal as itself;
2. ``hosts`` -- the first entry (config order) whose pattern matches; bare keys are
   full matches, ``domain:``/``keyword:``/``regexp:``/``geosite:`` as in routing.  A
   domain value is an alias: the lookup continues with that name;
3. name servers: first those whose ``domains`` match (config order), then -- unless
   ``disableFallback``, or ``disableFallbackIfMatch`` and one matched -- every other
   server without ``skipFallback``.  The first server giving a non-empty answer
   (after its ``expectIPs`` filter) wins; a timeout, error or empty answer moves on.

The families asked for are the intersection of *strategy* (freedom's
``UseIPv4``/``UseIPv6``/``UseIPv4v6``/...) and ``queryStrategy`` (global, then per
server); ``UseIPv6v4`` puts IPv6 first, every other strategy IPv4 first.  UDP answers
are cached per (server, name, type) for their TTL (negative answers for the SOA
TTL), bounded by :data:`tunray.dns.cache.MAX_ENTRIES`; ``localhost`` asks the OS via
``getaddrinfo`` and is not cached here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from loguru import logger

from tunray.config.errors import ConfigError, NotSupported, join
from tunray.dns.cache import TTLCache
from tunray.dns.client import udp_query
from tunray.dns.message import AAAA, NOERROR, NXDOMAIN, A, addresses
from tunray.net.address import IPAddress
from tunray.routing.domain import DomainMatcher
from tunray.routing.geodata import GeoAssets
from tunray.routing.ip import IPMatcher

DEFAULT_TIMEOUT = 4.0
MAX_ALIAS_DEPTH = 5

_QUERY_STRATEGIES = {
    **dict.fromkeys(("useip", "use_ip", "use-ip"), (True, True)),
    **dict.fromkeys(
        ("useip4", "useipv4", "use_ip4", "use_ipv4", "use_ip_v4", "use-ip4", "use-ipv4", "use-ip-v4"),
        (True, False),
    ),
    **dict.fromkeys(
        ("useip6", "useipv6", "use_ip6", "use_ipv6", "use_ip_v6", "use-ip6", "use-ipv6", "use-ip-v6"),
        (False, True),
    ),
}
_UNSUPPORTED_SCHEMES = (
    "tcp://",
    "tcp+local://",
    "https://",
    "https+local://",
    "h2c://",
    "h2c+local://",
    "quic+local://",
)
_SERVER_FIELDS = {"address", "port", "domains", "expectips", "expectedips", "skipfallback", "tag", "timeoutms",
                  "querystrategy", "disablecache"}  # fmt: skip
_SERVER_UNSUPPORTED = {"clientip": "per-server clientIp (EDNS client subnet)", "unexpectedips": "unexpectedIPs",
                       "servestale": "serveStale", "serveexpiredttl": "serveExpiredTTL", "finalquery": "finalQuery"}  # fmt: skip
_TOP_FIELDS = {"servers", "hosts", "tag", "querystrategy", "disablecache", "disablefallback", "disablefallbackifmatch",
               "enableparallelquery"}  # fmt: skip
_TOP_UNSUPPORTED = {"clientip": "dns clientIp (EDNS client subnet)", "servestale": "dns serveStale",
                    "serveexpiredttl": "dns serveExpiredTTL", "usesystemhosts": "dns useSystemHosts"}  # fmt: skip


def families(strategy: str) -> tuple[bool, bool, bool]:
    """(want IPv4, want IPv6, IPv6 first) for a freedom-style strategy name."""
    s = strategy.lower()
    for prefix in ("use", "force"):
        if s.startswith(prefix):
            s = s[len(prefix) :]
            break
    if s == "ipv4" or s == "ip4":
        return True, False, False
    if s == "ipv6" or s == "ip6":
        return False, True, False
    if s == "ipv6v4":
        return True, True, True
    return True, True, False


@dataclass(slots=True, eq=False)
class NameServer:
    """One configured server; ``address`` None means the OS resolver (``localhost``)."""

    address: tuple[str, int] | None
    domains: DomainMatcher | None = None
    expect: IPMatcher | None = None
    skip_fallback: bool = False
    want4: bool = True
    want6: bool = True
    timeout: float = DEFAULT_TIMEOUT
    cache: bool = True

    def __str__(self) -> str:
        return "localhost" if self.address is None else f"udp://{self.address[0]}:{self.address[1]}"


@dataclass(slots=True)
class _Host:
    matcher: DomainMatcher
    ips: list[IPAddress]
    alias: str = ""


class Resolver:
    __slots__ = (
        "_cache",
        "disable_fallback",
        "disable_fallback_if_match",
        "hosts",
        "servers",
        "want4",
        "want6",
    )

    def __init__(
        self,
        servers: list[NameServer] | None = None,
        hosts: list[_Host] | None = None,
        *,
        want4: bool = True,
        want6: bool = True,
        disable_fallback: bool = False,
        disable_fallback_if_match: bool = False,
    ) -> None:
        self.servers = servers or [NameServer(None)]
        self.hosts = hosts or []
        self.want4 = want4
        self.want6 = want6
        self.disable_fallback = disable_fallback
        self.disable_fallback_if_match = disable_fallback_if_match
        self._cache: TTLCache[tuple[int, str, int], list[IPAddress]] = TTLCache()

    # -- lookups ------------------------------------------------------------------------

    async def lookup(self, domain: str, strategy: str = "UseIP") -> list[IPAddress]:
        """Addresses of *domain* under *strategy*; an empty list when there are none."""
        want4, want6, v6_first = families(strategy)
        want4 = want4 and self.want4
        want6 = want6 and self.want6
        if not (want4 or want6):
            return []
        name = domain.lower().rstrip(".")
        if not name:
            return []
        for _ in range(MAX_ALIAS_DEPTH):
            try:
                literal = ipaddress.ip_address(name)
            except ValueError:
                pass
            else:
                return _filter([literal], want4, want6, v6_first)
            host = self._host(name)
            if host is None:
                break
            if not host.alias:
                return _filter(host.ips, want4, want6, v6_first)
            name = host.alias
        else:
            logger.info("dns: hosts aliases for {} are nested too deeply", domain)
            return []
        for server in self._servers_for(name):
            w4, w6 = want4 and server.want4, want6 and server.want6
            if not (w4 or w6):
                continue
            try:
                ips = await self._query(server, name, w4, w6)
            except (OSError, ValueError) as exc:
                logger.debug("dns: {} failed for {}: {}", server, name, exc)
                continue
            if server.expect is not None:
                ips = [ip for ip in ips if server.expect.match(ip)]
            if ips:
                return _filter(ips, want4, want6, v6_first)
        return []

    def _host(self, name: str) -> _Host | None:
        for host in self.hosts:
            if host.matcher.match(name):
                return host
        return None

    def _servers_for(self, name: str) -> list[NameServer]:
        matched = [s for s in self.servers if s.domains is not None and s.domains.match(name)]
        if self.disable_fallback or (matched and self.disable_fallback_if_match):
            return matched
        return matched + [s for s in self.servers if not s.skip_fallback and s not in matched]

    async def _query(self, server: NameServer, name: str, want4: bool, want6: bool) -> list[IPAddress]:
        if server.address is None:
            return await _system_lookup(name, want4, want6)
        types = [t for t, want in ((A, want4), (AAAA, want6)) if want]
        results = await asyncio.gather(
            *(self._query_type(server, name, t) for t in types), return_exceptions=True
        )
        ips: list[IPAddress] = []
        errors: list[BaseException] = []
        for r in results:
            if isinstance(r, BaseException):
                errors.append(r)
            else:
                ips.extend(r)
        if not ips and errors:
            for e in errors:
                if not isinstance(e, Exception):
                    raise e
            raise errors[0]
        return ips

    async def _query_type(self, server: NameServer, name: str, qtype: int) -> list[IPAddress]:
        loop = asyncio.get_running_loop()
        key = (id(server), name, qtype)
        if server.cache:
            cached = self._cache.get(key, loop.time())
            if cached is not None:
                return cached
        assert server.address is not None
        msg = await udp_query(server.address, name, qtype, budget=server.timeout)
        if msg.rcode not in (NOERROR, NXDOMAIN):
            raise OSError(f"server answered rcode {msg.rcode}")
        ips, ttl = addresses(msg, name, qtype)
        if server.cache:
            self._cache.put(key, ips, ttl, loop.time())
        return ips

    async def aclose(self) -> None:
        """Drop cached answers; queries hold no sockets between calls. Idempotent."""
        self._cache.clear()

    # -- config ---------------------------------------------------------------------------

    @classmethod
    def from_config(cls, raw: Any, path: str, *, assets: GeoAssets | None = None) -> Resolver:
        """Validate and build Xray's ``dns`` object (None: the OS resolver only)."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ConfigError(path, "expected an object {servers, hosts, queryStrategy, ...}")
        assets = assets or GeoAssets()
        fields = _fields(raw, path, _TOP_FIELDS, _TOP_UNSUPPORTED)
        want4, want6 = True, True
        key, value = fields.get("querystrategy", ("queryStrategy", None))
        if value is not None:
            want4, want6 = _query_strategy(value, join(path, key))
        disable_cache = _bool(fields, "disablecache", path)
        servers: list[NameServer] = []
        key, value = fields.get("servers", ("servers", None))
        if value is not None:
            if not isinstance(value, list):
                raise ConfigError(join(path, key), "expected an array of servers")
            for i, item in enumerate(value):
                servers.append(_server(item, join(join(path, key), i), assets, disable_cache))
        hosts: list[_Host] = []
        key, value = fields.get("hosts", ("hosts", None))
        if value is not None:
            if not isinstance(value, dict):
                raise ConfigError(join(path, key), "expected an object mapping domains to IPs")
            for pattern, target in value.items():
                hosts.append(_host(str(pattern), target, join(join(path, key), str(pattern)), assets))
        return cls(
            servers,
            hosts,
            want4=want4,
            want6=want6,
            disable_fallback=_bool(fields, "disablefallback", path),
            disable_fallback_if_match=_bool(fields, "disablefallbackifmatch", path),
        )

    def __repr__(self) -> str:
        return f"<Resolver {', '.join(map(str, self.servers))}; {len(self.hosts)} hosts>"


def _filter(ips: list[IPAddress], want4: bool, want6: bool, v6_first: bool) -> list[IPAddress]:
    v4 = [ip for ip in ips if ip.version == 4] if want4 else []
    v6 = [ip for ip in ips if ip.version == 6] if want6 else []
    return v6 + v4 if v6_first else v4 + v6


async def _system_lookup(name: str, want4: bool, want6: bool) -> list[IPAddress]:
    family = socket.AF_UNSPEC if want4 and want6 else socket.AF_INET if want4 else socket.AF_INET6
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(name, None, family=family, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    out: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).partition("%")[0])
        if ip not in out:
            out.append(ip)
    return out


def _fields(
    raw: dict[str, Any], path: str, known: set[str], unsupported: dict[str, str]
) -> dict[str, tuple[str, Any]]:
    fields: dict[str, tuple[str, Any]] = {}
    for k, v in raw.items():
        low = str(k).lower()
        if low in unsupported:
            if v not in (None, False, "", [], {}, 0):
                raise NotSupported(join(path, k), unsupported[low])
            continue
        if low not in known:
            logger.warning("config: {}: unknown field ignored", join(path, k))
            continue
        fields[low] = (k, v)
    return fields


def _bool(fields: dict[str, tuple[str, Any]], name: str, path: str) -> bool:
    key, value = fields.get(name, (name, None))
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ConfigError(join(path, key), "expected true or false")
    return value


def _query_strategy(value: Any, path: str) -> tuple[bool, bool]:
    if not isinstance(value, str) or value.lower() not in _QUERY_STRATEGIES:
        if isinstance(value, str) and value.lower().replace("-", "").replace("_", "") in (
            "usesys",
            "usesystem",
        ):
            raise NotSupported(path, "queryStrategy UseSystem")
        raise ConfigError(path, "expected one of 'UseIP', 'UseIPv4', 'UseIPv6'")
    return _QUERY_STRATEGIES[value.lower()]


def _parse_address(text: str, port: int | None, path: str) -> tuple[str, int] | None:
    low = text.lower()
    if low == "localhost":
        return None
    for scheme in _UNSUPPORTED_SCHEMES:
        if low.startswith(scheme):
            raise NotSupported(path, f"DNS over {scheme[:-3]}")
    if low == "fakedns":
        raise NotSupported(path, "fakedns")
    if low.startswith("udp://"):
        text = text[6:]
    host, parsed_port = text, None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(path, f"bad address {text!r}")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ConfigError(path, f"bad address {text!r}")
            parsed_port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        if not port_text.isdigit():
            raise ConfigError(path, f"bad port in {text!r}")
        parsed_port = int(port_text)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise NotSupported(path, f"DNS server by name ({text!r}); use an IP address") from None
    final = parsed_port if parsed_port is not None else port if port else 53
    if not 0 < final <= 65535:
        raise ConfigError(path, f"port {final} is out of range")
    return str(ip), final


def _server(raw: Any, path: str, assets: GeoAssets, disable_cache: bool) -> NameServer:
    if isinstance(raw, str):
        return NameServer(_parse_address(raw, None, path), cache=not disable_cache)
    if not isinstance(raw, dict):
        raise ConfigError(path, "expected an address string or a server object")
    fields = _fields(raw, path, _SERVER_FIELDS, _SERVER_UNSUPPORTED)
    key, address = fields.get("address", ("address", None))
    if not isinstance(address, str) or not address:
        raise ConfigError(join(path, key), 'is required (an IP address or "localhost")')
    pkey, port = fields.get("port", ("port", None))
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535):
        raise ConfigError(join(path, pkey), "expected a port number")
    server = NameServer(_parse_address(address, port, join(path, key)))
    dkey, domains = fields.get("domains", ("domains", None))
    if domains:
        server.domains = DomainMatcher.compile(domains, join(path, dkey), assets=assets)
    ekey, expect = fields.get("expectedips", fields.get("expectips", ("expectIPs", None)))
    if expect:
        if "*" in expect:
            raise NotSupported(join(path, ekey), 'expectIPs "*"')
        server.expect = IPMatcher.compile(expect, join(path, ekey), assets=assets)
    server.skip_fallback = _bool(fields, "skipfallback", path)
    qkey, strategy = fields.get("querystrategy", ("queryStrategy", None))
    if strategy is not None:
        server.want4, server.want6 = _query_strategy(strategy, join(path, qkey))
    tkey, timeout_ms = fields.get("timeoutms", ("timeoutMs", None))
    if timeout_ms:
        if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int) or timeout_ms < 0:
            raise ConfigError(join(path, tkey), "expected milliseconds")
        server.timeout = timeout_ms / 1000
    ckey, own_disable = fields.get("disablecache", ("disableCache", None))
    if own_disable is not None and not isinstance(own_disable, bool):
        raise ConfigError(join(path, ckey), "expected true or false")
    server.cache = not (own_disable if own_disable is not None else disable_cache)
    return server


def _host(pattern: str, target: Any, path: str, assets: GeoAssets) -> _Host:
    matcher = DomainMatcher.compile([pattern], path, assets=assets, default="full")
    values = target if isinstance(target, list) else [target]
    if not values or not all(isinstance(v, str) and v for v in values):
        raise ConfigError(path, "expected an IP address, a domain, or an array of IP addresses")
    ips: list[IPAddress] = []
    for v in values:
        try:
            ips.append(ipaddress.ip_address(v))
        except ValueError:
            return _Host(matcher, [], alias=v.lower().rstrip("."))  # Xray: a domain makes it an alias
    return _Host(matcher, ips)
