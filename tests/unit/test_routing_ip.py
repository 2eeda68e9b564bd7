"""IP rules: parsing, Xray's reverse (XOR) flags, family rules, and scale."""

from __future__ import annotations

import ipaddress
import random

import pytest
from tunray.config.errors import ConfigError
from tunray.routing.geodata import GeoAssets
from tunray.routing.geodata_writer import write_geoip
from tunray.routing.ip import PRIVATE_CIDRS, IPMatcher, _parse_entry, cut_reverse

PRIVATE_PLUS = [
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "192.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "8.8.8.8/32", "91.108.4.0/16",
]  # fmt: skip


def m(*entries: str, assets: GeoAssets | None = None) -> IPMatcher:
    return IPMatcher.compile(list(entries), "rules[0].ip", assets=assets)


def test_xray_geoip_matcher_table() -> None:
    matcher = m(*PRIVATE_PLUS)
    table = {
        "192.168.1.1": True, "192.0.0.0": True, "192.0.1.0": False, "0.1.0.0": True, "1.0.0.1": False,
        "8.8.8.7": False, "8.8.8.8": True, "2001:cdba::3257:9652": False, "91.108.255.254": True,
    }  # fmt: skip
    for ip, want in table.items():
        assert matcher.match(ipaddress.ip_address(ip)) is want, ip


def test_overlapping_prefixes_regression() -> None:
    matcher = m("98.108.20.0/22", "98.108.20.0/23")
    assert matcher.match("98.108.22.11")
    assert not matcher.match("98.108.25.0")


def test_ip_rule_table() -> None:
    matcher = m("8.8.8.8/32", "8.8.8.8/32", "2001:db8:85a3::8a2e:370:7334/128")
    assert matcher.match("8.8.8.8")
    assert not matcher.match("8.8.4.4")
    assert matcher.match("2001:db8:85a3::8a2e:370:7334")


def test_reversed_matcher_never_matches_a_family_without_rules() -> None:
    rev = m("8.8.8.8/32", "91.108.4.0/16").inverted()
    assert not rev.match("8.8.8.8")
    assert not rev.match("91.108.255.254")
    assert not rev.match("2001:cdba::3257:9652")
    assert rev.match("1.1.1.1")
    rev2 = m("8.8.8.8/32", "91.108.4.0/16", "fe80::").inverted()
    assert rev2.match("2001:cdba::3257:9652")
    assert not rev2.match("8.8.8.8")


def test_negated_entry() -> None:
    neg = m("!8.8.8.8/32")
    assert not neg.match("8.8.8.8")
    assert neg.match("1.1.1.1")
    assert not neg.match("2001:db8::1")


def test_reverse_flags_xor() -> None:
    table = {
        "!x": True,
        "!!x": False,
        "!!!x": True,
        "x": False,
    }
    for text, want in table.items():
        assert cut_reverse(text)[1] is want, text


def test_geo_entry_parsing_and_reverse(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    d = Path(str(tmp_path))
    write_geoip(
        d / "geoip.dat", {"CN": ["1.0.1.0/24"], "US": ["2001:4860::/32", "8.8.8.0/24"], "CA": ["24.0.0.0/8"]}
    )
    assets = GeoAssets([str(d)])
    table = {
        "geoip:us": False, "!geoip:cn": True, "!!geoip:cn": False, "geoip:!cn": True, "!geoip:!cn": False,
        "!!geoip:!cn": True, "!geoip:!!cn": True, "ext:geoip.dat:!cn": True, "ext:geoip.dat:!!!cn": True,
        "ext-ip:geoip.dat:!ca": True,
    }  # fmt: skip
    for text, want in table.items():
        is_geo, reverse, cidrs = _parse_entry(text, assets)
        assert is_geo and reverse is want and cidrs, text
    for text in ("192.168.0.0/24", "!!!192.168.0.0/24", "192.168.0.1", "fe80::/64", "fe80::"):
        assert not _parse_entry(text, assets)[0]
    assert _parse_entry("!!!192.168.0.0/24", assets)[1] is True
    us = m("geoip:us", assets=assets)
    assert us.match("2001:4860:4860::8888")
    assert us.match("8.8.8.8")
    assert not us.match("1.0.1.1")
    not_cn = m("geoip:!cn", assets=assets)
    assert not not_cn.match("1.0.1.1")
    assert not_cn.match("8.8.8.8")
    assert not not_cn.match("2001:4860::1")  # CN has no IPv6 ranges: the family never matches
    # the env variable finds the file too
    monkeypatch.setenv("TUNRAY_LOCATION_ASSET", str(d))
    assert m("geoip:ca").match("24.1.2.3")


def test_network_is_masked() -> None:
    assert m("91.108.4.0/16").match("91.108.255.254")


def test_bad_entries() -> None:
    for bad in ("10.0.0.0/33", "::/129", "nonsense", "1.2.3.4/x", "geoip:", "ext:geoip.dat", "ext::cn"):
        with pytest.raises(ConfigError) as info:
            m("10.0.0.0/8", bad)
        assert info.value.path == "rules[0].ip[1]", bad


def test_missing_geo_file_and_code(tmp_path: object) -> None:
    assets = GeoAssets([str(tmp_path)])
    with pytest.raises(ConfigError, match=r"geoip\.dat not found"):
        m("geoip:cn", assets=assets)
    write_geoip(f"{tmp_path}/geoip.dat", {"CN": ["1.0.1.0/24"]})
    with pytest.raises(ConfigError, match="'XX' not found"):
        m("geoip:xx", assets=GeoAssets([str(tmp_path)]))


def test_private_builtin_and_fallback(tmp_path: object) -> None:
    p = IPMatcher.private()
    for ip in ("10.1.2.3", "192.168.0.1", "127.0.0.1", "::1", "fe80::1", "fd00::1", "224.0.0.1", "::"):
        assert p.match(ip), ip
    for ip in ("8.8.8.8", "2001:4860::1", "1.1.1.1"):
        assert not p.match(ip), ip
    fallback = m("geoip:private", assets=GeoAssets([str(tmp_path)]))
    assert fallback.match("10.0.0.1") and not fallback.match("8.8.8.8")
    assert len(PRIVATE_CIDRS) == 18


def test_ipv4_mapped_ipv6_matches_as_ipv4() -> None:
    assert m("10.0.0.0/8").match("::ffff:10.1.2.3")


def test_ten_thousand_cidrs_agree_with_ipaddress() -> None:
    rng = random.Random(3)
    nets = []
    for _ in range(10000):
        prefix = rng.randint(8, 32)
        nets.append(ipaddress.ip_network((rng.getrandbits(32), prefix), strict=False))
    matcher = IPMatcher.compile([str(n) for n in nets], "p")
    by_prefix = [n for n in nets]
    for _ in range(300):
        ip = ipaddress.IPv4Address(rng.getrandbits(32))
        assert matcher.match(ip) == any(ip in n for n in by_prefix)
    for n in nets[:200]:
        assert matcher.match(n.network_address) and matcher.match(n.broadcast_address)
