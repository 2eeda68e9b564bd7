"""Xray's ``dns`` section: static hosts, name servers with domain lists, a cache, FakeDNS.

Theory of operation
-------------------
``resolve(name, want4, want6, fake=...)`` answers, in order:

1. an IP literal as itself;
2. ``hosts`` -- the first entry (config order) whose pattern matches; bare keys are
   full matches, ``domain:``/``keyword:``/``regexp:``/``geosite:`` as in routing.  A
   domain value is an alias: the lookup continues with that name.  Hosts answers
   carry TTL 10, as in Xray;
3. name servers: first those whose ``domains`` match (config order), then -- unless
   ``disableFallback``, or ``disableFallbackIfMatch`` and one matched -- every other
   server without ``skipFallback``; if that leaves none, the first server.  The first
   server giving a non-empty answer (after its ``expectIPs`` filter) wins; a timeout,
   error or empty answer moves on.  ``fakedns`` servers are used only when *fake* is
   set (the ``dns`` outbound answering an app); the dialer never gets fake addresses.

The families asked for are the intersection of the caller's and ``queryStrategy``
(global, then per server).  ``lookup(domain, strategy)`` is the dialer's form:
freedom's ``UseIPv4``/``UseIPv6v4``/... strategies, IPv6 first only for ``UseIPv6v4``.

Answers are cached per (server, name, type) until their TTL runs out (negative
answers for the SOA TTL), in one bounded LRU (``cacheSize``, default
:data:`tunray.dns.cache.MAX_ENTRIES`).  At most ``maxConcurrentQueries`` upstream
queries run at once (identical ones are shared); beyond that a query fails at once
instead of queueing, so a flood cannot grow memory.  Both are tunray's own keys in
the ``dns`` section (Xray ignores unknown keys).

Where queries go: servers not marked ``+local`` (plain IPs, ``tcp://``,
``https://``, ``h2c://``) are sent through routing with inbound tag = the server's
``tag`` or the section's ``tag`` once :meth:`Resolver.bind` has a runtime (see
:mod:`tunray.dns.routed`); ``+local`` forms and ``localhost`` dial directly.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from loguru import logger

from tunray.config.errors import ConfigError, NotSupported, join
from tunray.dns.cache import MAX_ENTRIES, TTLCache
from tunray.dns.doh import DoHUpstream
from tunray.dns.fakedns import FAKE_TTL, FakeDNS
from tunray.dns.message import AAAA, NOERROR, NXDOMAIN, A, addresses
from tunray.dns.upstream import Connector, TCPUpstream, UDPUpstream, Upstream
from tunray.net.address import Destination, IPAddress, Network, parse_host
from tunray.routing.domain import DomainMatcher
from tunray.routing.geodata import GeoAssets
from tunray.routing.ip import IPMatcher

if TYPE_CHECKING:
    from tunray.runtime import Runtime

DEFAULT_TIMEOUT = 4.0
MAX_ALIAS_DEPTH = 5
#: Default bound on upstream queries in flight (``dns.maxConcurrentQueries``).
MAX_IN_FLIGHT = 256
HOSTS_TTL = 10

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
_SCHEMES = {"udp": "udp", "tcp": "tcp", "tcp+local": "tcp", "https": "https", "https+local": "https",
            "h2c": "h2c", "h2c+local": "h2c"}  # fmt: skip
_DEFAULT_PORTS = {"udp": 53, "tcp": 53, "https": 443, "h2c": 80}
_SERVER_FIELDS = {"address", "port", "domains", "expectips", "expectedips", "skipfallback", "tag", "timeoutms",
                  "querystrategy", "disablecache", "clientip"}  # fmt: skip
_SERVER_UNSUPPORTED = {"unexpectedips": "unexpectedIPs",
                       "servestale": "serveStale", "serveexpiredttl": "serveExpiredTTL", "finalquery": "finalQuery"}  # fmt: skip
_TOP_FIELDS = {"servers", "hosts", "tag", "querystrategy", "disablecache", "disablefallback", "disablefallbackifmatch",
               "enableparallelquery", "clientip", "cachesize", "maxconcurrentqueries"}  # fmt: skip
_TOP_UNSUPPORTED = {"servestale": "dns serveStale",
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
    """One configured server.

    ``kind`` is ``udp``, ``tcp``, ``https``, ``h2c``, ``localhost`` (the OS resolver)
    or ``fakedns``; ``local`` marks the ``+local`` forms.  ``upstream`` is built by
    :meth:`Resolver.bind` (or lazily, direct, when there is no runtime).
    """

    kind: str
    dest: Destination | None = None
    host: str = ""
    path: str = ""
    local: bool = False
    domains: DomainMatcher | None = None
    expect: IPMatcher | None = None
    skip_fallback: bool = False
    want4: bool = True
    want6: bool = True
    timeout: float = DEFAULT_TIMEOUT
    cache: bool = True
    tag: str = ""
    client_ip: IPAddress | None = None
    #: Xray's policy key for ``enableParallelQuery`` grouping (adjacent equal keys = one group).
    policy: str = ""
    upstream: Upstream | None = field(default=None, repr=False)

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) of a UDP/TCP/DoH server; None for ``localhost`` and ``fakedns``."""
        return None if self.dest is None else (self.dest.host_text, self.dest.port)

    def __str__(self) -> str:
        if self.dest is None:
            return self.kind
        suffix = "+local" if self.local else ""
        if self.kind in ("https", "h2c"):
            return f"{self.kind}{suffix}://{self.host}:{self.dest.port}{self.path}"
        return f"{self.kind}{suffix}://{self.dest.netloc}"

    def make_upstream(self, connector: Connector) -> Upstream:
        assert self.dest is not None
        if self.kind == "udp":
            return UDPUpstream(self.dest, connector, self.client_ip)
        if self.kind == "tcp":
            return TCPUpstream(self.dest, connector, self.client_ip)
        return DoHUpstream(
            self.dest, self.host, self.path, connector, self.client_ip, tls=self.kind == "https"
        )


@dataclass(slots=True)
class _Host:
    matcher: DomainMatcher
    ips: list[IPAddress]
    alias: str = ""


@dataclass(frozen=True, slots=True)
class Answer:
    """A lookup's outcome: addresses, the TTL to hand on, and the DNS rcode.

    ``rcode`` is NOERROR (possibly with no address: the name has none of the asked
    families), NXDOMAIN, or -1 when no server gave a usable answer.
    """

    ips: list[IPAddress]
    ttl: int = 0
    rcode: int = NOERROR


_FAILED = Answer([], 0, -1)


class Resolver:
    __slots__ = (
        "_background",
        "_cache",
        "_in_flight",
        "_pending",
        "_routed",
        "disable_fallback",
        "disable_fallback_if_match",
        "fakedns",
        "hosts",
        "max_in_flight",
        "parallel",
        "servers",
        "tag",
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
        tag: str = "",
        cache_size: int = MAX_ENTRIES,
        max_in_flight: int = MAX_IN_FLIGHT,
        fakedns: FakeDNS | None = None,
        parallel: bool = False,
    ) -> None:
        self.parallel = parallel
        self._background: set[asyncio.Task[Any]] = set()
        self.servers = servers or [NameServer("localhost")]
        self.hosts = hosts or []
        self.want4 = want4
        self.want6 = want6
        self.disable_fallback = disable_fallback
        self.disable_fallback_if_match = disable_fallback_if_match
        self.tag = tag
        self.max_in_flight = max_in_flight
        self.fakedns = fakedns
        self._cache: TTLCache[tuple[int, str, int], tuple[list[IPAddress], int, float]] = TTLCache(cache_size)
        self._routed: list[Any] = []
        self._pending: dict[tuple[int, str, int], asyncio.Future[tuple[list[IPAddress], int, int]]] = {}
        self._in_flight = 0

    # -- wiring ---------------------------------------------------------------------------

    def bind(self, runtime: Runtime) -> None:
        """Send non-``+local`` servers' queries through *runtime*'s routing (Xray's behaviour)."""
        from tunray.dns.routed import LocalConnector, RoutedConnector

        local = LocalConnector(runtime.dialer)
        routed: dict[str, RoutedConnector] = {}
        for server in self.servers:
            if server.dest is None:
                continue
            if server.local:
                server.upstream = server.make_upstream(local)
                continue
            tag = server.tag or self.tag
            if tag not in routed:
                routed[tag] = RoutedConnector(runtime, tag)
            server.upstream = server.make_upstream(routed[tag])
        self._routed = list(routed.values())

    # -- lookups --------------------------------------------------------------------------

    async def lookup(self, domain: str, strategy: str = "UseIP") -> list[IPAddress]:
        """Addresses of *domain* under *strategy*; an empty list when there are none."""
        want4, want6, v6_first = families(strategy)
        answer = await self.resolve(domain, want4, want6)
        return _filter(answer.ips, want4, want6, v6_first)

    async def resolve(self, domain: str, want4: bool, want6: bool, *, fake: bool = False) -> Answer:
        want4 = want4 and self.want4
        want6 = want6 and self.want6
        name = domain.lower().rstrip(".")
        if not (want4 or want6) or not name:
            return Answer([])
        for _ in range(MAX_ALIAS_DEPTH):
            try:
                literal = ipaddress.ip_address(name)
            except ValueError:
                pass
            else:
                return Answer(_filter([literal], want4, want6, False), HOSTS_TTL)
            host = self._host(name)
            if host is None:
                break
            if not host.alias:
                return Answer(_filter(host.ips, want4, want6, False), HOSTS_TTL)
            name = host.alias
        else:
            logger.info("dns: hosts aliases for {} are nested too deeply", domain)
            return _FAILED
        candidates = [
            s
            for s in self._servers_for(name)
            if (fake or s.kind != "fakedns") and ((want4 and s.want4) or (want6 and s.want6))
        ]
        if self.parallel and len(candidates) > 1:
            return await self._parallel(candidates, name, want4, want6)
        outcomes: list[int] = []
        for server in candidates:
            ips, ttl, rcode = await self._ask_server(server, name, want4, want6)
            if ips:
                return Answer(_filter(ips, want4, want6, False), ttl)
            outcomes.append(rcode)
        return _merge(outcomes)

    async def _ask_server(
        self, server: NameServer, name: str, want4: bool, want6: bool
    ) -> tuple[list[IPAddress], int, int]:
        """One server's answer after ``expectIPs``; rcode -1 when it failed."""
        try:
            ips, ttl, rcode = await self._query(server, name, want4 and server.want4, want6 and server.want6)
        except (OSError, ValueError) as exc:
            logger.debug("dns: {} failed for {}: {}", server, name, exc or type(exc).__name__)
            return [], 0, -1
        if server.expect is not None:
            ips = [ip for ip in ips if server.expect.match(ip)]
        return ips, ttl, rcode

    async def _parallel(self, servers: list[NameServer], name: str, want4: bool, want6: bool) -> Answer:
        """``enableParallelQuery``: ask every server at once; groups decide in order.

        Xray (app/dns/dns.go parallelQuery): adjacent servers with the same policy
        (``clientIp``, ``skipFallback``, ``queryStrategy``, ``tag``, ``domains``,
        ``expectIPs``) form a group; the first group, in config order, with a
        non-empty answer wins, and within it the first server in order that has
        answered.  Queries still running are left to finish (and fill the cache).
        """
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._ask_server(s, name, want4, want6)) for s in servers]
        for t in tasks:
            self._background.add(t)
            t.add_done_callback(self._background.discard)
        outcomes: list[int] = []
        start = 0
        while start < len(servers):
            end = start
            while end + 1 < len(servers) and servers[end + 1].policy == servers[start].policy:
                end += 1
            group = tasks[start : end + 1]
            while True:
                for t in group:
                    if t.done() and t.result()[0]:
                        ips, ttl, _ = t.result()
                        return Answer(_filter(ips, want4, want6, False), ttl)
                waiting = [t for t in group if not t.done()]
                if not waiting:
                    break
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            outcomes += [t.result()[2] for t in group]
            start = end + 1
        return _merge(outcomes)

    def _host(self, name: str) -> _Host | None:
        for host in self.hosts:
            if host.matcher.match(name):
                return host
        return None

    def _servers_for(self, name: str) -> list[NameServer]:
        matched = [s for s in self.servers if s.domains is not None and s.domains.match(name)]
        if self.disable_fallback or (matched and self.disable_fallback_if_match):
            chosen = matched
        else:
            chosen = matched + [s for s in self.servers if not s.skip_fallback and s not in matched]
        return chosen or self.servers[:1]

    async def _query(
        self, server: NameServer, name: str, want4: bool, want6: bool
    ) -> tuple[list[IPAddress], int, int]:
        if server.kind == "localhost":
            return await _system_lookup(name, want4, want6), HOSTS_TTL, NOERROR
        if server.kind == "fakedns":
            if self.fakedns is None:
                raise OSError("fakedns is not configured")
            return self.fakedns.addresses(name, want4, want6), FAKE_TTL, NOERROR
        types = [t for t, want in ((A, want4), (AAAA, want6)) if want]
        results = await asyncio.gather(
            *(self._query_type(server, name, t) for t in types), return_exceptions=True
        )
        ips: list[IPAddress] = []
        ttls: list[int] = []
        rcodes: list[int] = []
        errors: list[BaseException] = []
        for r in results:
            if isinstance(r, BaseException):
                errors.append(r)
            else:
                ips.extend(r[0])
                if r[0]:
                    ttls.append(r[1])
                rcodes.append(r[2])
        if not ips and errors:
            for e in errors:
                if not isinstance(e, Exception):
                    raise e
            raise errors[0]
        rcode = NXDOMAIN if rcodes and all(r == NXDOMAIN for r in rcodes) else NOERROR
        return ips, min(ttls) if ttls else 0, rcode

    async def _query_type(
        self, server: NameServer, name: str, qtype: int
    ) -> tuple[list[IPAddress], int, int]:
        loop = asyncio.get_running_loop()
        key = (id(server), name, qtype)
        if server.cache:
            cached = self._cache.get(key, loop.time())
            if cached is not None:
                ips, rcode, expires = cached
                return ips, max(0, int(expires - loop.time())), rcode
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        if self._in_flight >= self.max_in_flight:
            raise OSError(f"{self._in_flight} DNS queries in flight (dns.maxConcurrentQueries)")
        future: asyncio.Future[tuple[list[IPAddress], int, int]] = loop.create_future()
        self._pending[key] = future
        self._in_flight += 1
        try:
            result = await self._ask(server, name, qtype)
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc if isinstance(exc, Exception) else OSError("query cancelled"))
                future.exception()  # retrieved here; waiters get it through their own await
            raise
        else:
            future.set_result(result)
            return result
        finally:
            self._in_flight -= 1
            del self._pending[key]

    async def _ask(self, server: NameServer, name: str, qtype: int) -> tuple[list[IPAddress], int, int]:
        if server.upstream is None:
            from tunray.dns.routed import LocalConnector

            server.upstream = server.make_upstream(LocalConnector())
        msg = await server.upstream.exchange(name, qtype, server.timeout)
        if msg.rcode not in (NOERROR, NXDOMAIN):
            raise OSError(f"server answered rcode {msg.rcode}")
        ips, ttl = addresses(msg, name, qtype)
        rcode = NXDOMAIN if msg.rcode == NXDOMAIN else NOERROR
        if server.cache:
            now = asyncio.get_running_loop().time()
            self._cache.put((id(server), name, qtype), (ips, rcode, now + ttl), ttl, now)
        return ips, max(ttl, 0), rcode

    @property
    def cache_entries(self) -> int:
        return len(self._cache)

    async def aclose(self) -> None:
        """Drop cached answers, close kept DoH connections and end routed query flows.  Idempotent."""
        self._cache.clear()
        background = list(self._background)
        for task in background:
            task.cancel()
        if background:
            await asyncio.gather(*background, return_exceptions=True)
        for server in self.servers:
            if server.upstream is not None:
                await server.upstream.aclose()
        for connector in self._routed:
            connector.abort_all()

    # -- config ---------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls, raw: Any, path: str, *, assets: GeoAssets | None = None, fakedns: FakeDNS | None = None
    ) -> Resolver:
        """Validate and build Xray's ``dns`` object (None: the OS resolver only)."""
        if raw is None:
            return cls(fakedns=fakedns)
        if not isinstance(raw, dict):
            raise ConfigError(path, "expected an object {servers, hosts, queryStrategy, ...}")
        assets = assets or GeoAssets()
        fields = _fields(raw, path, _TOP_FIELDS, _TOP_UNSUPPORTED)
        want4, want6 = True, True
        key, value = fields.get("querystrategy", ("queryStrategy", None))
        if value is not None:
            want4, want6 = _query_strategy(value, join(path, key))
        disable_cache = _bool(fields, "disablecache", path)
        client_ip = _client_ip(fields, path)
        servers: list[NameServer] = []
        key, value = fields.get("servers", ("servers", None))
        if value is not None:
            if not isinstance(value, list):
                raise ConfigError(join(path, key), "expected an array of servers")
            for i, item in enumerate(value):
                servers.append(_server(item, join(join(path, key), i), assets, disable_cache, client_ip))
        hosts: list[_Host] = []
        key, value = fields.get("hosts", ("hosts", None))
        if value is not None:
            if not isinstance(value, dict):
                raise ConfigError(join(path, key), "expected an object mapping domains to IPs")
            for pattern, target in value.items():
                hosts.append(_host(str(pattern), target, join(join(path, key), str(pattern)), assets))
        tkey, tag = fields.get("tag", ("tag", ""))
        if tag is not None and not isinstance(tag, str):
            raise ConfigError(join(path, tkey), "expected a string")
        if any(s.kind == "fakedns" for s in servers) and fakedns is None:
            fakedns = FakeDNS.default(want4, want6)
        return cls(
            servers,
            hosts,
            want4=want4,
            want6=want6,
            disable_fallback=_bool(fields, "disablefallback", path),
            disable_fallback_if_match=_bool(fields, "disablefallbackifmatch", path),
            tag=tag or "",
            cache_size=_count(fields, "cachesize", path, MAX_ENTRIES),
            max_in_flight=_count(fields, "maxconcurrentqueries", path, MAX_IN_FLIGHT),
            fakedns=fakedns,
            parallel=_bool(fields, "enableparallelquery", path),
        )

    def __repr__(self) -> str:
        return f"<Resolver {', '.join(map(str, self.servers))}; {len(self.hosts)} hosts>"


def _merge(outcomes: list[int]) -> Answer:
    """No server had an address: NXDOMAIN if all said so, empty if all answered, else failed."""
    if outcomes and all(r == NXDOMAIN for r in outcomes):
        return Answer([], 0, NXDOMAIN)
    if outcomes and all(r in (NOERROR, NXDOMAIN) for r in outcomes):
        return Answer([])
    return _FAILED


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


def _parse_address(text: str, port: int | None, path: str) -> NameServer:
    low = text.lower()
    if low == "localhost":
        return NameServer("localhost")
    if low == "fakedns":
        return NameServer("fakedns", cache=False)
    scheme, sep, rest = low.partition("://")
    if sep:
        kind = _SCHEMES.get(scheme)
        if kind is None:
            what = "DNS over TLS (not in Xray's schema)" if scheme in ("tls", "dot") else f"DNS over {scheme}"
            raise NotSupported(path, what)
        local = scheme.endswith("+local")
        if kind in ("https", "h2c"):
            return _parse_url(text, kind, local, path)
        text = text[len(scheme) + 3 :]
        if kind == "udp":
            local = False
    else:
        kind, local = "udp", False
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
        ip = ipaddress.ip_address(host.rstrip("/"))
    except ValueError:
        raise NotSupported(path, f"DNS server by name ({text!r}); use an IP address") from None
    final = parsed_port if parsed_port is not None else port if port else 53
    if not 0 < final <= 65535:
        raise ConfigError(path, f"port {final} is out of range")
    network = Network.TCP if kind == "tcp" else Network.UDP
    return NameServer(kind, Destination(network, ip, final), local=local)


def _parse_url(text: str, kind: str, local: bool, path: str) -> NameServer:
    try:
        url = urlsplit(text)
        port = url.port
    except ValueError as exc:
        raise ConfigError(path, f"bad URL {text!r}: {exc}") from None
    if not url.hostname:
        raise ConfigError(path, f"bad URL {text!r}: no host")
    host = parse_host(url.hostname)
    dest = Destination(Network.TCP, host, port or _DEFAULT_PORTS[kind])
    return NameServer(kind, dest, host=url.hostname, path=url.path or "/dns-query", local=local)


def _policy_key(fields: dict[str, tuple[str, Any]]) -> str:
    """Xray's ``buildPolicyID`` inputs, normalised (infra/conf/dns.go)."""

    def norm(name: str) -> Any:
        value = fields.get(name, (name, None))[1]
        if isinstance(value, list):
            return sorted(str(v).strip().lower() for v in value)
        return str(value).strip().lower() if value not in (None, False) else ""

    keys = ("clientip", "skipfallback", "querystrategy", "tag", "domains", "expectedips", "expectips", "unexpectedips")
    return repr([norm(k) for k in keys])


def _client_ip(fields: dict[str, tuple[str, Any]], path: str) -> IPAddress | None:
    key, value = fields.get("clientip", ("clientIp", None))
    if value in (None, ""):
        return None
    try:
        return ipaddress.ip_address(value)
    except (ValueError, TypeError):
        raise ConfigError(join(path, key), "expected an IP address") from None


def _count(fields: dict[str, tuple[str, Any]], name: str, path: str, default: int) -> int:
    key, value = fields.get(name, (name, None))
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(join(path, key), "expected a positive number")
    return value


def _server(
    raw: Any, path: str, assets: GeoAssets, disable_cache: bool, client_ip: IPAddress | None = None
) -> NameServer:
    if isinstance(raw, str):
        server = _parse_address(raw, None, path)
        server.policy = _policy_key({})
        server.cache = server.cache and not disable_cache
        server.client_ip = client_ip
        return server
    if not isinstance(raw, dict):
        raise ConfigError(path, "expected an address string or a server object")
    fields = _fields(raw, path, _SERVER_FIELDS, _SERVER_UNSUPPORTED)
    key, address = fields.get("address", ("address", None))
    if not isinstance(address, str) or not address:
        raise ConfigError(join(path, key), 'is required (an IP address, a URL, "localhost" or "fakedns")')
    pkey, port = fields.get("port", ("port", None))
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535):
        raise ConfigError(join(path, pkey), "expected a port number")
    server = _parse_address(address, port, join(path, key))
    server.client_ip = _client_ip(fields, path) or client_ip
    server.policy = _policy_key(fields)
    tkey, tag = fields.get("tag", ("tag", ""))
    if tag is not None and not isinstance(tag, str):
        raise ConfigError(join(path, tkey), "expected a string")
    server.tag = tag or ""
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
    own = own_disable if own_disable is not None else disable_cache
    server.cache = server.kind != "fakedns" and not own
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
