"""The router: Xray's rule semantics, domain strategies, balancers and config errors."""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import Any

import pytest
from tunray.config.errors import ConfigError, NotSupported
from tunray.net.address import Destination, IPAddress, Network
from tunray.routing.router import Route, Router
from tunray.session import FlowContext, User

TAGS = ["direct", "proxy", "block", "test", "test-1", "test-2", "other-3"]


class FakeResolver:
    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[tuple[str, str]] = []

    async def lookup(self, domain: str, strategy: str = "UseIP") -> list[IPAddress]:
        self.calls.append((domain, strategy))
        return [ipaddress.ip_address(a) for a in self.table.get(domain, [])]


def router(rules: list[dict[str, Any]], resolver: Any = None, **extra: Any) -> Router:
    return Router.from_config({"rules": rules, **extra}, "routing", outbound_tags=TAGS, resolver=resolver)


def flow(
    target: str,
    *,
    network: Network = Network.TCP,
    source: str = "10.0.0.2:40000",
    inbound: str = "tun-in",
    email: str = "",
    protocol: str = "",
    route_target: str | None = None,
) -> FlowContext:
    ctx = FlowContext(
        inbound_tag=inbound,
        inbound_protocol="tun",
        source=Destination.parse(source, network),
        target=Destination.parse(target, network),
        user=User(email=email),
        protocol=protocol,
    )
    if route_target is not None:
        ctx.route_target = Destination.parse(route_target, network)
    return ctx


async def tag(r: Router, ctx: FlowContext) -> str | None:
    route = await r.pick_route(ctx)
    return None if route is None else route.outbound_tag


async def test_first_match_wins_and_route_fields() -> None:
    r = router(
        [
            {"type": "field", "domain": ["domain:example.com"], "outboundTag": "proxy", "ruleTag": "r0"},
            {"domain": ["example"], "outboundTag": "block"},
            {"network": "tcp,udp", "outboundTag": "direct"},
        ]
    )
    assert await r.pick_route(flow("www.example.com:443")) == Route("proxy", 0, "r0")
    assert await r.pick_route(flow("example.org:443")) == Route("block", 1)
    assert await r.pick_route(flow("1.2.3.4:443")) == Route("direct", 2)


async def test_no_match_means_default() -> None:
    r = router([{"domain": ["domain:example.com"], "outboundTag": "proxy"}])
    assert await r.pick_route(flow("1.2.3.4:80")) is None
    assert (
        await Router.from_config(None, "routing", outbound_tags=TAGS, resolver=None).pick_route(flow("a.b:1"))
        is None
    )


async def test_domain_conditions_ignore_ip_targets_unless_sniffed() -> None:
    r = router(
        [
            {"domain": ["regexp:"], "outboundTag": "block"},
            {"domain": ["domain:example.com"], "outboundTag": "proxy"},
        ]
    )
    assert await tag(r, flow("93.184.216.34:443")) is None
    assert await tag(r, flow("93.184.216.34:443", route_target="example.com:443")) == "block"


async def test_ip_conditions_ignore_domain_targets_under_asis() -> None:
    res = FakeResolver({"example.com": ["192.168.0.1"]})
    r = router([{"ip": ["192.168.0.0/16"], "outboundTag": "test"}], res)
    assert await tag(r, flow("example.com:80")) is None
    assert res.calls == []
    assert await tag(r, flow("192.168.3.4:80")) == "test"


async def test_network_rule() -> None:
    r = router([{"network": ["tcp"], "outboundTag": "test"}])
    assert await tag(r, flow("example.com:80")) == "test"
    assert await tag(r, flow("example.com:80", network=Network.UDP)) is None


async def test_network_string_is_not_trimmed() -> None:
    r = router([{"network": "tcp, udp", "outboundTag": "test"}])
    assert await tag(r, flow("1.1.1.1:53", network=Network.UDP)) is None  # " udp" is unknown
    assert await tag(r, flow("1.1.1.1:53")) == "test"


async def test_ip_on_demand_resolves_lazily_once() -> None:
    res = FakeResolver({"example.com": ["192.168.0.1"]})
    r = router(
        [
            {"domain": ["full:never.test"], "outboundTag": "block"},
            {"ip": ["10.0.0.0/8"], "outboundTag": "block"},
            {"ip": ["192.168.0.0/16"], "outboundTag": "test"},
        ],
        res,
        domainStrategy="ipondemand",
    )
    assert await tag(r, flow("example.com:80")) == "test"
    assert res.calls == [("example.com", "UseIP")]
    assert await tag(r, flow("127.0.0.1:80")) is None
    assert len(res.calls) == 1  # IP targets need no DNS


async def test_ip_on_demand_skips_dns_when_cheaper_conditions_fail() -> None:
    res = FakeResolver({"example.com": ["192.168.0.1"]})
    r = router(
        [{"port": 443, "ip": ["192.168.0.0/16"], "outboundTag": "test"}], res, domainStrategy="IPOnDemand"
    )
    assert await tag(r, flow("example.com:80")) is None
    assert res.calls == []


async def test_ip_if_non_match() -> None:
    res = FakeResolver({"example.com": ["192.168.0.1"]})
    r = router(
        [
            {"domain": ["full:example.org"], "outboundTag": "proxy"},
            {"ip": ["192.168.0.0/16"], "outboundTag": "test"},
        ],
        res,
        domainStrategy="IPIfNonMatch",
    )
    assert await tag(r, flow("example.org:80")) == "proxy"
    assert res.calls == []  # a domain rule matched first: no DNS
    assert await tag(r, flow("example.com:80")) == "test"
    assert res.calls == [("example.com", "UseIP")]
    assert await tag(r, flow("unknown.example:80")) is None


async def test_ip_if_non_match_with_ip_target_makes_no_dns_call() -> None:
    res = FakeResolver({})
    r = router([{"ip": ["127.0.0.0/8"], "outboundTag": "test"}], res, domainStrategy="IPIfNonMatch")
    assert await tag(r, flow("127.0.0.1:80")) == "test"
    assert res.calls == []


async def test_source_user_inbound_protocol_ports() -> None:
    r = router(
        [
            {"sourceIP": ["192.168.0.0/16"], "outboundTag": "test"},
            {"user": ["admin@example.com", "regexp:^ops-[0-9]+@"], "outboundTag": "proxy"},
            {"inboundTag": ["test", "test1"], "outboundTag": "block"},
            {"protocol": ["http"], "outboundTag": "other-3"},
            {"port": [443, "1000-1100"], "outboundTag": "direct"},
            {"sourcePort": "123, 9993-9999", "outboundTag": "test-1"},
        ]
    )
    assert await tag(r, flow("1.1.1.1:1", source="192.168.0.1:5")) == "test"
    assert await tag(r, flow("1.1.1.1:1", email="admin@example.com")) == "proxy"
    assert await tag(r, flow("1.1.1.1:1", email="ops-12@corp")) == "proxy"
    assert await tag(r, flow("1.1.1.1:1", email="other@example.com")) is None
    assert await tag(r, flow("1.1.1.1:1", inbound="test")) == "block"
    assert await tag(r, flow("1.1.1.1:1", inbound="test2")) is None
    assert await tag(r, flow("1.1.1.1:1", protocol="http1")) == "other-3"
    assert await tag(r, flow("1.1.1.1:1", protocol="tls")) is None
    for port, want in ((443, "direct"), (1100, "direct"), (1005, "direct"), (53, None)):
        assert await tag(r, flow(f"1.1.1.1:{port}")) == want
    for sport, want in ((123, "test-1"), (9999, "test-1"), (9994, "test-1"), (53, None)):
        assert await tag(r, flow("1.1.1.1:1", source=f"10.0.0.2:{sport}")) == want


async def test_conditions_are_anded() -> None:
    r = router([{"domain": ["domain:example.com"], "port": 443, "network": "tcp", "outboundTag": "proxy"}])
    assert await tag(r, flow("a.example.com:443")) == "proxy"
    assert await tag(r, flow("a.example.com:80")) is None
    assert await tag(r, flow("a.example.com:443", network=Network.UDP)) is None


async def test_source_wins_when_both_given() -> None:
    r = router([{"source": ["10.0.0.0/8"], "sourceIP": ["172.16.0.0/12"], "outboundTag": "test"}])
    assert await tag(r, flow("1.1.1.1:1", source="172.16.0.5:1")) == "test"
    assert await tag(r, flow("1.1.1.1:1", source="10.0.0.5:1")) is None


async def test_missing_outbound_tag_still_routes() -> None:
    r = router([{"port": 53, "outboundTag": "no-such-outbound"}])
    assert await tag(r, flow("1.1.1.1:53")) == "no-such-outbound"


async def test_balancers() -> None:
    balancers = [
        {"tag": "rr", "selector": ["test-"], "strategy": {"type": "roundRobin"}},
        {"tag": "rnd", "selector": ["test", "other"]},
        {"tag": "empty", "selector": ["nothing-"], "fallbackTag": "direct"},
        {"tag": "empty2", "selector": ["nothing-"]},
    ]
    r = router(
        [
            {"port": 1, "balancerTag": "rr", "ruleTag": "lb"},
            {"port": 2, "balancerTag": "rnd"},
            {"port": 3, "balancerTag": "empty"},
            {"port": 4, "balancerTag": "empty2"},
        ],
        balancers=balancers,
    )
    picks = [await r.pick_route(flow("1.1.1.1:1")) for _ in range(4)]
    assert [p.outbound_tag for p in picks if p] == ["test-1", "test-2", "test-1", "test-2"]
    assert picks[0] == Route("test-1", 0, "lb", "rr")
    seen = Counter([await tag(r, flow("1.1.1.1:2")) for _ in range(200)])
    assert set(seen) == {"test", "test-1", "test-2", "other-3"}
    assert await tag(r, flow("1.1.1.1:3")) == "direct"
    assert await tag(r, flow("1.1.1.1:4")) is None
    assert r.balancers["rnd"].strategy == "random"


@pytest.mark.parametrize(
    ("routing", "path", "exc"),
    [
        ({"rules": [{"outboundTag": "x"}]}, "routing.rules[0]", ConfigError),
        ({"rules": [{"type": "field", "outboundTag": "x"}]}, "routing.rules[0]", ConfigError),
        ({"rules": [{"port": 1}]}, "routing.rules[0]", ConfigError),
        ({"rules": [{"port": 1, "balancerTag": "nope"}]}, "routing.rules[0].balancerTag", ConfigError),
        ({"rules": [{"port": 1}, {"port": 1, "outboundTag": "x"}, {}, {}, {}]}, "routing.rules[0]", ConfigError),
        ({"rules": [{"port": 1, "outboundTag": "x"}] * 3 + [{"ip": ["10.0.0.0/8", "1.2.3.4/40"], "outboundTag": "x"}]},
         "routing.rules[3].ip[1]", ConfigError),
        ({"rules": [{"domain": ["ok.com", "bad domain"], "outboundTag": "x"}]}, "routing.rules[0].domain[1]", ConfigError),
        ({"rules": [{"port": "99999", "outboundTag": "x"}]}, "routing.rules[0].port", ConfigError),
        ({"rules": [{"user": ["regexp:("], "outboundTag": "x"}]}, "routing.rules[0].user[0]", ConfigError),
        ({"rules": [{"attrs": {":path": "/x"}, "port": 1, "outboundTag": "x"}]}, "routing.rules[0].attrs", NotSupported),
        ({"rules": [{"process": ["curl"], "outboundTag": "x"}]}, "routing.rules[0].process", NotSupported),
        ({"rules": [{"localIP": ["1.1.1.1"], "outboundTag": "x"}]}, "routing.rules[0].localIP", NotSupported),
        ({"rules": [{"localPort": 1, "outboundTag": "x"}]}, "routing.rules[0].localPort", NotSupported),
        ({"rules": [{"vlessRoute": "1", "outboundTag": "x"}]}, "routing.rules[0].vlessRoute", NotSupported),
        ({"rules": [{"webhook": {"url": "http://x"}, "outboundTag": "x"}]}, "routing.rules[0].webhook", NotSupported),
        ({"rules": [{"localOS": ["linux"], "outboundTag": "x"}]}, "routing.rules[0].localOS", NotSupported),
        ({"domainStrategy": "IPIfNonMatched"}, "routing.domainStrategy", ConfigError),
        ({"rules": {}}, "routing.rules", ConfigError),
        ({"balancers": [{"tag": "b"}]}, "routing.balancers[0].selector", ConfigError),
        ({"balancers": [{"tag": "b", "selector": ["a"], "strategy": {"type": "leastPing"}}]},
         "routing.balancers[0].strategy.type", NotSupported),
        ({"balancers": [{"tag": "b", "selector": ["a"], "strategy": {"type": "leastLoad"}}]},
         "routing.balancers[0].strategy.type", NotSupported),
        ({"balancers": [{"tag": "b", "selector": ["a"]}, {"tag": "b", "selector": ["c"]}]}, "routing.balancers[1]", ConfigError),
        ("rules", "routing", ConfigError),
    ],
)  # fmt: skip
def test_config_errors_name_the_json_path(routing: Any, path: str, exc: type[Exception]) -> None:
    with pytest.raises(exc) as info:
        Router.from_config(routing, "routing", outbound_tags=TAGS, resolver=None)
    assert isinstance(info.value, ConfigError)
    assert info.value.path == path, str(info.value)


def test_domain_strategy_is_case_insensitive() -> None:
    for spelling, canonical in (
        ("asis", "AsIs"),
        ("IPIFNONMATCH", "IPIfNonMatch"),
        ("IpOnDemand", "IPOnDemand"),
    ):
        r = Router.from_config({"domainStrategy": spelling}, "routing", outbound_tags=TAGS, resolver=None)
        assert r.domain_strategy == canonical


async def test_domain_and_domains_are_both_used() -> None:
    r = router([{"domain": ["full:a.test"], "domains": ["full:b.test"], "outboundTag": "proxy"}])
    assert await tag(r, flow("a.test:1")) == "proxy"
    assert await tag(r, flow("b.test:1")) == "proxy"
    assert await tag(r, flow("c.test:1")) is None


def test_config_parse_shapes() -> None:
    r = Router.from_config(
        {"rules": [{"domain": "baidu.com,qq.com", "ip": ["10.0.0.0/8", "::1/128"], "outboundTag": "direct"}]},
        "routing",
        outbound_tags=TAGS,
        resolver=None,
    )
    assert len(r.rules) == 1 and r.rules[0].ip is not None and r.rules[0].ip.match("::1")
