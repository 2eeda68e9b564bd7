"""The host fence's address classification and rule literals (the TUN tests cover it end to end)."""

from __future__ import annotations

import ipaddress

import pytest
from tunray.net.hostfence import STRICT, HostAccessDenied, HostFence, is_host_address, literal_networks
from tunray.routing.router import Router


@pytest.mark.parametrize("text", ["127.0.0.1", "127.9.9.9", "::1", "0.0.0.0", "::", "::ffff:127.0.0.1"])
def test_loopback_and_unspecified_are_the_host(text: str) -> None:
    assert is_host_address(ipaddress.ip_address(text))
    with pytest.raises(HostAccessDenied, match="own address"):
        STRICT.check(ipaddress.ip_address(text), 80)


@pytest.mark.parametrize("text", ["192.0.2.1", "2001:db8::1", "224.0.0.1", "fe80::1"])
def test_foreign_addresses_are_not(text: str) -> None:
    # only bind(2) probes: no packet is sent anywhere
    assert not is_host_address(ipaddress.ip_address(text))
    STRICT.check(ipaddress.ip_address(text), 80)


def test_an_allowed_network_opens_only_itself() -> None:
    fence = HostFence().with_allowed((ipaddress.ip_network("127.0.0.1/32"),))
    fence.check(ipaddress.ip_address("127.0.0.1"), 80)
    fence.check(ipaddress.ip_address("::ffff:127.0.0.1"), 80)
    with pytest.raises(HostAccessDenied):
        fence.check(ipaddress.ip_address("127.0.0.2"), 80)
    with pytest.raises(HostAccessDenied):
        fence.check(ipaddress.ip_address("::1"), 80)


def test_literal_networks_skip_geoip_and_negations() -> None:
    nets = literal_networks(["geoip:private", "127.0.0.1", "abcd::/16", "!10.0.0.0/8", "ext:x.dat:y", "10.7.0.1/24"])
    assert nets == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("abcd::/16"),
        ipaddress.ip_network("10.7.0.0/24"),
    )


def test_the_router_carries_a_rules_literals_to_the_route() -> None:
    rules = [{"ip": ["geoip:private", "127.0.0.1/32"], "outboundTag": "direct"}, {"port": 53, "outboundTag": "dns"}]
    router = Router.from_config({"rules": rules}, "routing", outbound_tags={"direct", "dns"}, resolver=None)
    assert router.rules[0].fixed.host_nets == (ipaddress.ip_network("127.0.0.1/32"),)
    assert router.rules[1].fixed.host_nets == ()
