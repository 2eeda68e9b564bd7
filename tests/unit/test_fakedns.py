"""FakeDNS pools, the ``fakedns`` section, and the dispatcher restoring the domain."""

from __future__ import annotations

import io
import ipaddress

import pytest
from tunray.config.errors import ConfigError
from tunray.dns import Resolver
from tunray.dns.fakedns import FakeDNS, FakePool
from tunray.log import AccessLog
from tunray.net.address import Destination, Network
from tunray.testing.harness import driver_of, running


def test_pool_never_gives_one_address_to_two_live_names() -> None:
    pool = FakePool("198.18.0.0/28", 8)  # 16 addresses, 8 live names
    seen: dict[str, ipaddress.IPv4Address | ipaddress.IPv6Address] = {}
    for i in range(200):
        name = f"n{i}.test"
        ip = pool.address_for(name)
        assert ip in pool.network
        seen[name] = ip
        live = [f"n{j}.test" for j in range(max(0, i - 7), i + 1)]
        addrs = [pool.domain_for(seen[n]) for n in live]
        assert addrs == live  # every live name still maps back from its own address
        assert len(pool) == min(i + 1, 8)
    assert pool.domain_for(seen["n0.test"]) != "n0.test"  # long evicted


def test_pool_lru_keeps_recently_used_names() -> None:
    pool = FakePool("198.18.0.0/24", 3)
    a = pool.address_for("a.test")
    pool.address_for("b.test")
    pool.address_for("c.test")
    assert pool.address_for("a.test") == a  # refreshes a
    pool.address_for("d.test")  # evicts b, the least recently used
    assert pool.domain_for(a) == "a.test"
    assert "b.test" not in [pool.domain_for(ip) for ip in pool.network.hosts()]


def test_section_forms_and_errors() -> None:
    fake = FakeDNS.from_config(
        [{"ipPool": "198.18.0.0/16", "poolSize": 100}, {"ipPool": "fc00::/64", "poolSize": 10}], "fakedns"
    )
    v4, v6 = fake.addresses("Name.Test.")
    assert v4.version == 4 and v6.version == 6
    assert fake.domain_for(v4) == fake.domain_for(v6) == "name.test"
    assert fake.addresses("name.test", want4=False) == [v6]
    with pytest.raises(ConfigError, match=r"fakedns\.poolSize"):
        FakeDNS.from_config({"ipPool": "198.18.0.0/16", "poolSize": 0}, "fakedns")
    with pytest.raises(ConfigError, match=r"fakedns\[0\]\.ipPool"):
        FakeDNS.from_config([{"ipPool": "198.18.0.0/31", "poolSize": 2}], "fakedns")


async def test_fakedns_server_only_answers_the_dns_outbound() -> None:
    r = Resolver.from_config({"servers": ["fakedns"], "hosts": {"h.test": "192.0.2.1"}}, "dns")
    assert r.fakedns is not None and len(r.fakedns.pools) == 2  # Xray's defaults for UseIP
    answer = await r.resolve("x.test", True, True, fake=True)
    assert [
        ip in ipaddress.ip_network(n)
        for ip, n in zip(answer.ips, ("198.18.0.0/15", "fc00::/18"), strict=True)
    ] == [True, True]
    assert answer.ttl == 1
    assert await r.lookup("x.test") == []  # the dialer never gets a fake address
    assert (await r.resolve("h.test", True, False, fake=True)).ips == [ipaddress.ip_address("192.0.2.1")]


def _config(route_only: bool = False) -> dict[str, object]:
    return {
        "log": {"loglevel": "none"},
        "fakedns": {"ipPool": "198.18.0.0/16", "poolSize": 1000},
        "dns": {"servers": ["fakedns"]},
        "inbounds": [{"protocol": "driver", "tag": "in",
                      "sniffing": {"enabled": True, "destOverride": ["fakedns"], "routeOnly": route_only}}],
        "outbounds": [{"protocol": "blackhole", "tag": "block"}, {"protocol": "blackhole", "tag": "named"}],
        "routing": {"rules": [{"domain": ["domain:wanted.test"], "outboundTag": "named"}]},
    }  # fmt: skip


@pytest.mark.parametrize("route_only", [False, True])
async def test_flow_to_a_fake_address_is_dispatched_with_the_domain(route_only: bool) -> None:
    log = io.StringIO()
    async with running(_config(route_only), access_log=AccessLog(log)) as rt:
        (ip,) = (await rt.resolver.resolve("www.wanted.test", True, False, fake=True)).ips
        _app, task = driver_of(rt).open_tcp("10.0.0.9:40000", f"{ip}:80")
        await task
    # routeOnly does not apply to fake addresses: the outbound gets the name too.
    assert "accepted tcp:www.wanted.test:80 [in -> named]" in log.getvalue(), log.getvalue()


async def test_flow_to_a_forgotten_fake_address_is_reset() -> None:
    log = io.StringIO()
    async with running(_config(), access_log=AccessLog(log)) as rt:
        app, task = driver_of(rt).open_tcp("10.0.0.9:40000", "198.18.7.7:80")
        await task
        # Content sniffing accepted the connection to read its first bytes: the app
        # sees a reset, never a clean close.
        assert app.reset
        app2, task2 = driver_of(rt).open_udp("10.0.0.9:40001", "198.18.7.8:53")
        app2.send(b"x", Destination.parse("198.18.7.8:53", Network.UDP))
        await task2
        assert app2.closed
    text = log.getvalue()
    assert "rejected tcp:198.18.7.7:80" in text and "no name holds now" in text, text
    assert "rejected udp:198.18.7.8:53" in text, text


async def test_the_fake_domain_wins_over_a_sniffed_host() -> None:
    cfg = _config()
    cfg["inbounds"][0]["sniffing"]["destOverride"] = ["fakedns", "http"]  # type: ignore[index]
    log = io.StringIO()
    async with running(cfg, access_log=AccessLog(log)) as rt:
        (ip,) = (await rt.resolver.resolve("www.wanted.test", True, False, fake=True)).ips
        app, task = driver_of(rt).open_tcp("10.0.0.9:40000", f"{ip}:80")
        await app.send(b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n")
        await task
    assert "accepted tcp:www.wanted.test:80 [in -> named]" in log.getvalue(), log.getvalue()
