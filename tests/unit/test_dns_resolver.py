"""The resolver against a real UDP DNS responder on 127.0.0.1 (built on the codec)."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any, cast

import pytest
from tunray.config.errors import ConfigError, NotSupported
from tunray.dns import Resolver
from tunray.dns.message import AAAA, CNAME, NXDOMAIN, SOA, A, Record, build_response, parse_message
from tunray.net.address import IPAddress


def ips(*texts: str) -> list[IPAddress]:
    return [ipaddress.ip_address(t) for t in texts]


class Responder(asyncio.DatagramProtocol):
    """A tiny authoritative server: zone = {name: {"A": [...], "AAAA": [...], "CNAME": target}}."""

    def __init__(self, zone: dict[str, dict[str, Any]], ttl: int = 300, drop_first: int = 0) -> None:
        self.zone = zone
        self.ttl = ttl
        self.drop = drop_first
        self.queries: list[tuple[str, int]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = parse_message(data)
        q = query.questions[0]
        self.queries.append((q.name, q.qtype))
        if self.drop > 0:
            self.drop -= 1
            return
        answers: list[Record] = []
        name = q.name
        for _ in range(8):
            entry = self.zone.get(name)
            if entry is None:
                break
            if "CNAME" in entry:
                answers.append(Record(name, CNAME, self.ttl, entry["CNAME"]))
                name = entry["CNAME"]
                continue
            key = "A" if q.qtype == A else "AAAA"
            answers += [Record(name, q.qtype, self.ttl, ipaddress.ip_address(t)) for t in entry.get(key, [])]
            break
        if q.name not in self.zone:
            reply = build_response(query, rcode=NXDOMAIN, authority=[Record("test", SOA, 60, 30)])
        else:
            reply = build_response(query, answers)
        assert self.transport is not None
        self.transport.sendto(reply, addr)

    @classmethod
    async def start(cls, zone: dict[str, dict[str, Any]], **kw: Any) -> tuple[Responder, int]:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(
            lambda: cls(zone, **kw), local_addr=("127.0.0.1", 0)
        )
        return proto, transport.get_extra_info("sockname")[1]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


ZONE: dict[str, dict[str, Any]] = {
    "example.test": {"A": ["192.0.2.10", "192.0.2.11"], "AAAA": ["2001:db8::10"]},
    "www.example.test": {"CNAME": "edge.cdn.test"},
    "edge.cdn.test": {"A": ["198.51.100.7"], "AAAA": ["2001:db8::7"]},
    "v4only.test": {"A": ["192.0.2.99"]},
}


async def test_lookup_strategies_against_a_real_server() -> None:
    server, port = await Responder.start(ZONE)
    resolver = Resolver.from_config({"servers": [f"udp://127.0.0.1:{port}"]}, "dns")
    try:
        assert await resolver.lookup("example.test") == ips("192.0.2.10", "192.0.2.11", "2001:db8::10")
        assert await resolver.lookup("example.test", "UseIPv4") == ips("192.0.2.10", "192.0.2.11")
        assert await resolver.lookup("Example.Test.", "UseIPv6") == ips("2001:db8::10")
        assert await resolver.lookup("example.test", "UseIPv6v4") == ips(
            "2001:db8::10", "192.0.2.10", "192.0.2.11"
        )
        assert await resolver.lookup("example.test", "ForceIPv4v6") == ips(
            "192.0.2.10", "192.0.2.11", "2001:db8::10"
        )
        assert await resolver.lookup("www.example.test", "UseIPv4") == ips("198.51.100.7")
        assert await resolver.lookup("missing.test") == []
        assert await resolver.lookup("192.0.2.55") == ips("192.0.2.55")
        assert await resolver.lookup("192.0.2.55", "UseIPv6") == []
    finally:
        await resolver.aclose()
        server.close()


async def test_answers_are_cached_for_their_ttl() -> None:
    server, port = await Responder.start(ZONE)
    resolver = Resolver.from_config({"servers": [{"address": "127.0.0.1", "port": port}]}, "dns")
    nocache = Resolver.from_config(
        {"servers": [{"address": "127.0.0.1", "port": port}], "disableCache": True}, "dns"
    )
    try:
        await resolver.lookup("v4only.test", "UseIPv4")
        await resolver.lookup("v4only.test", "UseIPv4")
        assert server.queries == [("v4only.test", A)]
        await resolver.lookup("missing.test", "UseIPv4")
        await resolver.lookup("missing.test", "UseIPv4")  # NXDOMAIN cached for the SOA TTL
        assert server.queries.count(("missing.test", A)) == 1
        server.queries.clear()
        await nocache.lookup("v4only.test", "UseIPv4")
        await nocache.lookup("v4only.test", "UseIPv4")
        assert server.queries == [("v4only.test", A)] * 2
    finally:
        await resolver.aclose()
        await nocache.aclose()
        server.close()


async def test_zero_ttl_is_not_cached() -> None:
    server, port = await Responder.start(ZONE, ttl=0)
    resolver = Resolver.from_config({"servers": [f"127.0.0.1:{port}"]}, "dns")
    try:
        for _ in range(2):
            assert await resolver.lookup("v4only.test", "UseIPv4") == ips("192.0.2.99")
        assert len(server.queries) == 2
    finally:
        server.close()


async def test_retry_after_a_lost_packet() -> None:
    server, port = await Responder.start(ZONE, drop_first=1)
    resolver = Resolver.from_config(
        {"servers": [{"address": "127.0.0.1", "port": port, "timeoutMs": 400}]}, "dns"
    )
    try:
        assert await resolver.lookup("v4only.test", "UseIPv4") == ips("192.0.2.99")
        assert server.queries == [("v4only.test", A)] * 2
    finally:
        server.close()


@pytest.mark.timeout(10)
async def test_dead_server_falls_back_to_the_next() -> None:
    dead, dead_port = await Responder.start(ZONE, drop_first=100)
    live, live_port = await Responder.start(ZONE)
    resolver = Resolver.from_config(
        {
            "servers": [
                {"address": "127.0.0.1", "port": dead_port, "timeoutMs": 200},
                f"udp://127.0.0.1:{live_port}",
            ]
        },
        "dns",
    )
    try:
        assert await resolver.lookup("v4only.test", "UseIPv4") == ips("192.0.2.99")
        assert dead.queries and live.queries == [("v4only.test", A)]
    finally:
        dead.close()
        live.close()


async def test_domains_expect_ips_and_skip_fallback() -> None:
    corp_zone: dict[str, dict[str, Any]] = {
        "intranet.corp": {"A": ["10.1.1.1"]},
        "v4only.test": {"A": ["10.9.9.9"]},
    }
    corp, corp_port = await Responder.start(corp_zone)
    public, public_port = await Responder.start(ZONE)
    resolver = Resolver.from_config(
        {
            "servers": [
                f"127.0.0.1:{public_port}",
                {"address": "127.0.0.1", "port": corp_port, "domains": ["domain:corp"], "skipFallback": True},
            ]
        },
        "dns",
    )
    expecting = Resolver.from_config(
        {
            "servers": [
                {"address": "127.0.0.1", "port": corp_port, "expectIPs": ["192.0.2.0/24"]},
                f"127.0.0.1:{public_port}",
            ]
        },
        "dns",
    )
    try:
        assert await resolver.lookup("intranet.corp", "UseIPv4") == ips("10.1.1.1")
        assert public.queries == []  # the matching server is asked first
        assert await resolver.lookup("v4only.test", "UseIPv4") == ips("192.0.2.99")
        assert ("v4only.test", A) not in corp.queries  # skipFallback keeps it out of the fallback list
        # corp answers 10.9.9.9, which expectIPs rejects: the next server answers
        assert await expecting.lookup("v4only.test", "UseIPv4") == ips("192.0.2.99")
        assert ("v4only.test", A) in corp.queries
    finally:
        corp.close()
        public.close()


async def test_hosts() -> None:
    server, port = await Responder.start(ZONE)
    resolver = Resolver.from_config(
        {
            "servers": [f"127.0.0.1:{port}"],
            "hosts": {
                "router.lan": "192.168.1.1",
                "domain:dual.test": ["10.0.0.1", "fd00::1"],
                "keyword:blocked": "0.0.0.0",
                "alias.test": "www.example.test",
            },
        },
        "dns",
    )
    try:
        assert await resolver.lookup("router.lan") == ips("192.168.1.1")
        assert await resolver.lookup("sub.router.lan", "UseIPv4") == []  # bare keys are full matches
        assert await resolver.lookup("a.dual.test", "UseIPv6v4") == ips("fd00::1", "10.0.0.1")
        assert await resolver.lookup("ads.blocked.example") == ips("0.0.0.0")
        assert await resolver.lookup("alias.test", "UseIPv4") == ips("198.51.100.7")
        assert ("alias.test", A) not in server.queries
    finally:
        server.close()


async def test_query_strategy_limits_families() -> None:
    server, port = await Responder.start(ZONE)
    resolver = Resolver.from_config({"servers": [f"127.0.0.1:{port}"], "queryStrategy": "UseIPv4"}, "dns")
    try:
        assert await resolver.lookup("example.test") == ips("192.0.2.10", "192.0.2.11")
        assert await resolver.lookup("example.test", "UseIPv6") == []
        assert all(t == A for _, t in server.queries)
        assert ("example.test", AAAA) not in server.queries
    finally:
        server.close()


async def test_localhost_uses_the_system_resolver() -> None:
    resolver = Resolver.from_config(None, "dns")
    assert await resolver.lookup("localhost", "UseIPv4") == ips("127.0.0.1")
    assert await resolver.lookup("does-not-exist.invalid") == []
    assert str(resolver.servers[0]) == "localhost"
    r2 = Resolver.from_config({"servers": ["localhost"], "tag": "dns-in"}, "dns")
    assert await r2.lookup("127.0.0.1") == ips("127.0.0.1")


@pytest.mark.parametrize(
    ("raw", "path", "exc"),
    [
        ({"servers": ["tls://1.1.1.1"]}, "dns.servers[0]", NotSupported),
        ({"servers": ["quic+local://1.1.1.1"]}, "dns.servers[0]", NotSupported),
        ({"servers": ["https://"]}, "dns.servers[0]", ConfigError),
        ({"servers": ["dns.google"]}, "dns.servers[0]", NotSupported),
        ({"servers": [{"port": 53}]}, "dns.servers[0].address", ConfigError),
        ({"servers": [{"address": "1.1.1.1", "domains": ["bad domain"]}]}, "dns.servers[0].domains[0]", ConfigError),
        ({"servers": [{"address": "1.1.1.1", "expectIPs": ["1.2.3.4/99"]}]}, "dns.servers[0].expectIPs[0]", ConfigError),
        ({"servers": [{"address": "1.1.1.1", "clientIp": "1.2.3"}]}, "dns.servers[0].clientIp", ConfigError),
        ({"cacheSize": 0}, "dns.cacheSize", ConfigError),
        ({"servers": "1.1.1.1"}, "dns.servers", ConfigError),
        ({"queryStrategy": "UseIPv5"}, "dns.queryStrategy", ConfigError),
        ({"queryStrategy": "UseSystem"}, "dns.queryStrategy", NotSupported),
        ({"hosts": {"a.test": 5}}, "dns.hosts.a.test", ConfigError),
        ({"hosts": {"regexp:(": "1.1.1.1"}}, "dns.hosts.regexp:([0]", ConfigError),
        ({"disableCache": "yes"}, "dns.disableCache", ConfigError),
        ({"servestale": True}, "dns.servestale", NotSupported),
        ([], "dns", ConfigError),
    ],
)  # fmt: skip
def test_config_errors(raw: Any, path: str, exc: type[Exception]) -> None:
    with pytest.raises(exc) as info:
        Resolver.from_config(raw, "dns")
    assert isinstance(info.value, ConfigError) and info.value.path == path, str(info.value)


def test_config_forms() -> None:
    r = Resolver.from_config(
        {"servers": ["8.8.8.8", "udp://[2001:4860:4860::8888]:5353", {"address": "1.1.1.1", "port": 5300}, "localhost",
                     "tcp://1.1.1.1", "tcp+local://1.1.1.1:5353", "https://1.1.1.1/dns-query",
                     "https+local://dns.test:8443/q", "h2c://10.0.0.1", "fakedns"],
         "queryStrategy": "use_ipv6", "tag": "dns", "disableFallback": True},
        "dns",
    )  # fmt: skip
    assert [str(s) for s in r.servers] == [
        "udp://8.8.8.8:53",
        "udp://[2001:4860:4860::8888]:5353",
        "udp://1.1.1.1:5300",
        "localhost",
        "tcp://1.1.1.1:53",
        "tcp+local://1.1.1.1:5353",
        "https://1.1.1.1:443/dns-query",
        "https+local://dns.test:8443/q",
        "h2c://10.0.0.1:80/dns-query",
        "fakedns",
    ]
    assert [s.local for s in r.servers] == [False] * 5 + [True, False, True, False, False]
    # queryStrategy keeps IPv6 only, so the default FakeDNS pool is the IPv6 one
    assert r.fakedns is not None and [p.version for p in r.fakedns.pools] == [6]
    assert (r.want4, r.want6, r.disable_fallback) == (False, True, True)
    assert [str(s) for s in Resolver.from_config({"servers": []}, "dns").servers] == ["localhost"]


@pytest.mark.parametrize("outbound", ["direct", "block"])
async def test_queries_not_marked_local_go_through_routing_with_the_dns_tag(outbound: str) -> None:
    import io

    from tunray.log import AccessLog
    from tunray.testing.harness import running

    server, port = await Responder.start(ZONE)
    log = io.StringIO()
    cfg = {
        "log": {"loglevel": "none"},
        "dns": {"tag": "dns-q", "servers": [{"address": "127.0.0.1", "port": port, "timeoutMs": 400}]},
        "outbounds": [{"protocol": "blackhole", "tag": "block"}, {"protocol": "freedom", "tag": "direct"}],
        "routing": {"rules": [{"inboundTag": ["dns-q"], "outboundTag": outbound}]},
    }
    try:
        async with running(cfg, access_log=AccessLog(log)) as rt:
            got = await rt.resolver.lookup("v4only.test", "UseIPv4")
    finally:
        server.close()
    assert f"accepted udp:127.0.0.1:{port} [dns-q -> {outbound}]" in log.getvalue(), log.getvalue()
    if outbound == "direct":
        assert got == ips("192.0.2.99") and server.queries == [("v4only.test", A)]
    else:  # routing sent the query into a blackhole: no answer, and the responder never saw it
        assert got == [] and server.queries == []


@pytest.mark.timeout(10)
async def test_parallel_query_takes_a_live_answer_without_waiting_for_a_dead_server() -> None:
    dead, dead_port = await Responder.start(ZONE, drop_first=100)
    live, live_port = await Responder.start(ZONE)
    servers = [{"address": "127.0.0.1", "port": dead_port, "timeoutMs": 3000}, f"127.0.0.1:{live_port}"]
    parallel = Resolver.from_config({"servers": servers, "enableParallelQuery": True}, "dns")
    try:
        assert await parallel.lookup("v4only.test", "UseIPv4") == ips("192.0.2.99")
        # both were asked at once; the dead one has not even been retried (its retry is
        # due after half its 3 s budget), so the answer did not wait for it
        assert dead.queries == [("v4only.test", A)] and live.queries == [("v4only.test", A)]
    finally:
        await parallel.aclose()
        dead.close()
        live.close()


async def test_parallel_query_groups_decide_in_config_order() -> None:
    first_zone: dict[str, dict[str, Any]] = {"v4only.test": {"A": ["10.0.0.1"]}}
    first, first_port = await Responder.start(first_zone)
    second, second_port = await Responder.start(ZONE)
    servers = [
        {"address": "127.0.0.1", "port": second_port},  # group 1 ...
        f"127.0.0.1:{first_port}",  # ... same policy (a plain entry): still group 1
        {"address": "127.0.0.1", "port": first_port, "domains": ["domain:test"]},
    ]
    r = Resolver.from_config({"servers": servers, "enableParallelQuery": True, "disableCache": True}, "dns")
    assert [s.policy for s in r.servers][:2] == [r.servers[0].policy] * 2 and r.servers[2].policy != r.servers[0].policy
    try:
        # the domains-matched server comes first in the order and is its own group: it wins
        assert await r.lookup("v4only.test", "UseIPv4") == ips("10.0.0.1")
    finally:
        first.close()
        second.close()
