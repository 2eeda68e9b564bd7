"""The router: Xray's ``routing`` section compiled into a first-match rule list.

Theory of operation
-------------------
Everything is compiled at start-up: each rule becomes a tuple of cheap predicate
closures (AND) over a per-flow :class:`_View`, ordered cheapest first -- inbound
tag, network, protocol, ports, user, source IP, domain -- plus an optional
target-IP matcher evaluated last, because under ``IPOnDemand`` it may need a DNS
lookup.  Inside one field, the list is OR (a set, a port bisect, one compiled
domain or IP matcher).

``pick_route`` scans rules in order; the first full match wins.  Domain conditions
see the routing target only when it is a domain; IP conditions see it only when it
is an IP, or -- ``IPOnDemand`` -- the domain's addresses, resolved at most once per
flow when the first IP condition is reached.  ``IPIfNonMatch`` scans once without
resolving and, if nothing matched and the target is a domain, resolves and scans
again.  None means "use the default outbound".  A rule whose ``outboundTag`` names
no outbound still matches (the dispatcher then drops the flow, as Xray does).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loguru import logger

from tunray.config.errors import ConfigError, NotSupported, join
from tunray.net.address import IPAddress, Network
from tunray.net.hostfence import IPNetwork, literal_networks
from tunray.routing.balancer import Balancer
from tunray.routing.domain import DomainMatcher
from tunray.routing.geodata import GeoAssets
from tunray.routing.ip import IPMatcher
from tunray.routing.ports import PortList

if TYPE_CHECKING:
    from tunray.dns import Resolver
    from tunray.session import FlowContext

DOMAIN_STRATEGIES = {"asis": "AsIs", "ipifnonmatch": "IPIfNonMatch", "ipondemand": "IPOnDemand"}

# Xray rule fields tunray does not implement.
UNSUPPORTED_FIELDS = {
    "attrs": "routing rule 'attrs' (HTTP header matching)",
    "process": "routing rule 'process' (process name matching)",
    "localip": "routing rule 'localIP'",
    "localport": "routing rule 'localPort'",
    "vlessroute": "routing rule 'vlessRoute'",
    "webhook": "routing rule 'webhook'",
    "localos": "routing rule 'localOS'",
}
KNOWN_FIELDS = {
    "type", "domain", "domains", "ip", "port", "sourceport", "network", "source", "sourceip",
    "inboundtag", "protocol", "user", "outboundtag", "balancertag", "ruletag",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Route:
    outbound_tag: str
    rule_index: int
    rule_tag: str = ""
    balancer_tag: str = ""
    #: Literal IPs/CIDRs of the rule's ``ip`` list: the host addresses a fenced flow may reach.
    host_nets: tuple[IPNetwork, ...] = ()


class _View:
    """What the conditions of one flow look at, read from the context once."""

    __slots__ = (
        "domain",
        "email",
        "inbound",
        "ip",
        "ips",
        "network",
        "port",
        "protocol",
        "src_ip",
        "src_port",
    )

    def __init__(self, ctx: FlowContext) -> None:
        # Plain attribute reads only: properties (Destination.ip, Enum.value) cost
        # ~0.1-0.2 µs each, which is most of a simple rule's budget.
        target = ctx.route_target or ctx.target
        host = target.host
        if type(host) is str:
            self.domain: str | None = host
            self.ip: IPAddress | None = None
            self.ips: Sequence[IPAddress] | None = None
        else:
            self.domain = None
            self.ip = host  # type: ignore[assignment]
            self.ips = (host,)  # type: ignore[assignment]
        self.network = target.network
        self.port = target.port
        self.inbound = ctx.inbound_tag
        self.protocol = ctx.protocol
        src = ctx.source
        src_host = src.host
        self.src_ip: IPAddress | None = None if type(src_host) is str else src_host  # type: ignore[assignment]
        self.src_port = src.port
        self.email = ctx.user.email


Cond = Callable[[_View], bool]


class _Rule:
    __slots__ = ("balancer", "conds", "fixed", "host_nets", "index", "ip", "outbound_tag", "tag")

    def __init__(
        self,
        index: int,
        conds: tuple[Cond, ...],
        ip: IPMatcher | None,
        outbound_tag: str,
        balancer: Balancer | None,
        tag: str,
        host_nets: tuple[IPNetwork, ...] = (),
    ) -> None:
        self.index = index
        self.host_nets = host_nets
        self.conds = conds
        self.ip = ip
        self.outbound_tag = outbound_tag
        self.balancer = balancer
        self.tag = tag
        # A frozen dataclass costs ~1 µs to build; a plain rule's route never changes.
        self.fixed = Route(outbound_tag, index, tag, host_nets=host_nets)

    def route(self) -> Route | None:
        if self.balancer is None:
            return self.fixed
        chosen = self.balancer.pick()
        if chosen is None:
            return None
        return Route(chosen, self.index, self.tag, self.balancer.tag, self.host_nets)


class Router:
    __slots__ = ("_if_non_match", "_on_demand", "balancers", "domain_strategy", "resolver", "rules")

    def __init__(
        self,
        rules: Sequence[_Rule] = (),
        *,
        domain_strategy: str = "AsIs",
        balancers: dict[str, Balancer] | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.rules = tuple(rules)
        self.domain_strategy = domain_strategy
        self.balancers = balancers or {}
        self.resolver = resolver
        has_ip_rules = any(r.ip is not None for r in self.rules)
        usable = has_ip_rules and resolver is not None
        self._on_demand = usable and domain_strategy == "IPOnDemand"
        self._if_non_match = usable and domain_strategy == "IPIfNonMatch"

    # -- per flow -------------------------------------------------------------------

    async def pick_route(self, ctx: FlowContext) -> Route | None:
        """The route for *ctx*, or None for the default outbound."""
        if not self.rules:
            return None
        view = _View(ctx)
        k = self._scan(view, 0, self._on_demand)
        while k <= -2:  # IPOnDemand reached an IP condition with a domain target
            view.ips = await self._resolve(view.domain)
            k = self._scan(view, -2 - k, False)
        if k >= 0:
            return self.rules[k].route()
        if self._if_non_match and view.domain is not None:
            view.ips = await self._resolve(view.domain)
            if view.ips:
                k = self._scan(view, 0, False)
                if k >= 0:
                    return self.rules[k].route()
        return None

    def _scan(self, view: _View, start: int, on_demand: bool) -> int:
        """Index of the first matching rule from *start*; -1 if none; ``-2 - k`` when
        rule *k* needs the target's resolved addresses first."""
        rules = self.rules
        for k in range(start, len(rules)):
            rule = rules[k]
            for cond in rule.conds:
                if not cond(view):
                    break
            else:
                ipm = rule.ip
                if ipm is None:
                    return k
                ips = view.ips
                if ips is None:
                    if on_demand:
                        return -2 - k
                    continue
                for ip in ips:
                    if ipm.match(ip):
                        return k
        return -1

    async def _resolve(self, domain: str | None) -> list[IPAddress]:
        if domain is None or self.resolver is None:
            return []
        try:
            return await self.resolver.lookup(domain)
        except Exception as exc:  # a DNS failure means "no addresses", never a routing crash
            logger.debug("routing: resolving {} failed: {}", domain, exc)
            return []

    # -- config -----------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        raw: Any,
        path: str,
        *,
        outbound_tags: Sequence[str],
        resolver: Resolver | None,
        assets: GeoAssets | None = None,
    ) -> Router:
        """Validate and compile Xray's ``routing`` object (None means no rules)."""
        if raw is None:
            return cls(resolver=resolver)
        if not isinstance(raw, dict):
            raise ConfigError(path, "expected an object {domainStrategy, rules, balancers}")
        assets = assets or GeoAssets()
        fields = {str(k).lower(): (k, v) for k, v in raw.items()}
        strategy = "AsIs"
        key, value = fields.get("domainstrategy", ("domainStrategy", None))
        if value is not None:
            if not isinstance(value, str) or value.lower() not in DOMAIN_STRATEGIES:
                raise ConfigError(join(path, key), "expected one of 'AsIs', 'IPIfNonMatch', 'IPOnDemand'")
            strategy = DOMAIN_STRATEGIES[value.lower()]
        for low, (key, _value) in fields.items():
            if low not in {"domainstrategy", "rules", "balancers", "domainmatcher"}:
                logger.warning("config: {}: unknown field ignored", join(path, key))
        balancers: dict[str, Balancer] = {}
        bkey, braw = fields.get("balancers", ("balancers", None))
        if braw is not None:
            if not isinstance(braw, list):
                raise ConfigError(join(path, bkey), "expected an array of balancers")
            for i, item in enumerate(braw):
                b = Balancer.from_config(item, join(join(path, bkey), i), outbound_tags)
                if b.tag in balancers:
                    raise ConfigError(join(join(path, bkey), i), f"duplicate balancer tag {b.tag!r}")
                balancers[b.tag] = b
        rules: list[_Rule] = []
        rkey, rraw = fields.get("rules", ("rules", None))
        if rraw is not None:
            if not isinstance(rraw, list):
                raise ConfigError(join(path, rkey), "expected an array of rules")
            for i, item in enumerate(rraw):
                rules.append(_compile_rule(item, join(join(path, rkey), i), i, balancers, assets))
        return cls(rules, domain_strategy=strategy, balancers=balancers, resolver=resolver)

    def __repr__(self) -> str:
        return f"<Router {len(self.rules)} rules, {self.domain_strategy}>"


def _string_list(value: Any, path: str) -> list[str]:
    """Xray's ``StringList``: an array of strings, or one string split on commas."""
    if isinstance(value, str):
        return value.split(",") if value else []
    if not isinstance(value, list):
        raise ConfigError(path, "expected an array of strings")
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise ConfigError(join(path, i), "expected a string")
    return value


def _compile_rule(
    raw: Any, path: str, index: int, balancers: dict[str, Balancer], assets: GeoAssets
) -> _Rule:
    if not isinstance(raw, dict):
        raise ConfigError(path, "expected a rule object")
    fields: dict[str, tuple[str, Any]] = {}
    for k, v in raw.items():
        low = str(k).lower()
        if low in UNSUPPORTED_FIELDS:
            if v not in (None, "", [], {}):
                raise NotSupported(join(path, k), UNSUPPORTED_FIELDS[low])
            continue
        if low not in KNOWN_FIELDS:
            logger.warning("config: {}: unknown field ignored", join(path, k))
            continue
        if v is not None:
            fields[low] = (k, v)

    def get(*names: str) -> tuple[str, Any]:
        for n in names:
            if n in fields:
                return fields[n]
        return names[0], None

    conds: list[Cond] = []

    key, value = get("inboundtag")
    if value is not None and (tags := _string_list(value, join(path, key))):
        tag_set = frozenset(tags)
        conds.append(lambda v: bool(v.inbound) and v.inbound in tag_set)

    key, value = get("network")
    if value is not None:
        if isinstance(value, str):
            names = value.split(",")  # Xray does not trim: " udp" is an unknown network
        else:
            names = _string_list(value, join(path, key))
        if names:
            nets = frozenset(Network(n.lower()) for n in names if n.lower() in ("tcp", "udp"))
            conds.append(lambda v: v.network in nets)

    key, value = get("protocol")
    if value is not None and (protos := _string_list(value, join(path, key))):
        prefixes = tuple(protos)
        conds.append(lambda v: bool(v.protocol) and v.protocol.startswith(prefixes))

    key, value = get("port")
    if value is not None:
        ports = PortList.parse(value, join(path, key))
        conds.append(lambda v: v.port in ports)

    key, value = get("sourceport")
    if value is not None:
        sports = PortList.parse(value, join(path, key))
        conds.append(lambda v: v.src_port in sports)

    key, value = get("user")
    if value is not None and (users := _string_list(value, join(path, key))):
        conds.append(_user_condition(users, join(path, key)))

    key, value = get("sourceip", "source")
    if value is not None and (entries := _string_list(value, join(path, key))):
        src = IPMatcher.compile(entries, join(path, key), assets=assets)
        conds.append(lambda v: v.src_ip is not None and src.match(v.src_ip))

    matchers = []
    for name in ("domain", "domains"):  # Xray reads both keys and uses them together
        key, value = get(name)
        if value is not None and (patterns := _string_list(value, join(path, key))):
            matchers.append(DomainMatcher.compile(patterns, join(path, key), assets=assets))
    if len(matchers) == 1:
        dom = matchers[0]
        conds.append(lambda v: v.domain is not None and dom.match(v.domain))
    elif matchers:
        doms = tuple(matchers)
        conds.append(lambda v: v.domain is not None and any(m.match(v.domain) for m in doms))

    ipm = None
    host_nets: tuple[IPNetwork, ...] = ()
    key, value = get("ip")
    if value is not None and (entries := _string_list(value, join(path, key))):
        ipm = IPMatcher.compile(entries, join(path, key), assets=assets)
        host_nets = literal_networks(entries)

    if not conds and ipm is None:
        raise ConfigError(path, "this rule has no effective fields (add domain, ip, port, network, ...)")

    _, rule_tag = get("ruletag")
    if rule_tag is not None and not isinstance(rule_tag, str):
        raise ConfigError(join(path, get("ruletag")[0]), "expected a string")
    okey, outbound = get("outboundtag")
    bkey, balancer_tag = get("balancertag")
    if outbound is not None and not isinstance(outbound, str):
        raise ConfigError(join(path, okey), "expected an outbound tag string")
    if balancer_tag is not None and not isinstance(balancer_tag, str):
        raise ConfigError(join(path, bkey), "expected a balancer tag string")
    balancer = None
    if not outbound:
        if not balancer_tag:
            raise ConfigError(path, "a rule needs an outboundTag or a balancerTag")
        balancer = balancers.get(balancer_tag)
        if balancer is None:
            known = ", ".join(sorted(balancers)) or "none defined"
            raise ConfigError(join(path, bkey), f"no balancer is tagged {balancer_tag!r} (known: {known})")
    return _Rule(index, tuple(conds), ipm, outbound or "", balancer, rule_tag or "", host_nets)


def _user_condition(users: list[str], path: str) -> Cond:
    exact: set[str] = set()
    patterns: list[re.Pattern[str]] = []
    for i, u in enumerate(users):
        if u.startswith("regexp:"):
            try:
                patterns.append(re.compile(u[7:]))
            except re.error as exc:
                raise ConfigError(join(path, i), f"invalid regexp {u[7:]!r}: {exc}") from None
        else:
            exact.add(u)
    frozen = frozenset(exact)
    if not patterns:
        return lambda v: bool(v.email) and v.email in frozen
    regexps = tuple(patterns)

    def match(v: _View) -> bool:
        email = v.email
        if not email:
            return False
        return email in frozen or any(r.search(email) for r in regexps)

    return match
