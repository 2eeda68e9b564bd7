"""geoip.dat / geosite.dat: the writer's files read back, found through the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from tunray.config.errors import ConfigError
from tunray.routing import geodata
from tunray.routing.domain import DomainMatcher
from tunray.routing.geodata import DOMAIN, FULL, REGEX, SUBSTR, GeoAssets, GeoDataError
from tunray.routing.geodata_writer import (
    encode_geoip,
    geoip_bytes,
    geosite_bytes,
    varint,
    write_geoip,
    write_geosite,
)
from tunray.routing.ip import IPMatcher

SITES: dict[str, list[str | tuple[str, list[str]]]] = {
    "CN": [
        "domain:example.cn",
        ("domain:ads.example.cn", ["ads"]),
        ("full:tracker.cn", ["ads", "tracking"]),
        "keyword:baidu",
        r"regexp:^cdn[0-9]+\.cn$",
    ],
    "GEOLOCATION-!CN": ["domain:google.com", ("domain:googleadservices.com", ["!cn"])],
    "PRIVATE": ["full:only-in-file.lan"],
}


@pytest.fixture
def asset_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_geosite(tmp_path / "geosite.dat", SITES)
    write_geoip(tmp_path / "geoip.dat", {"CN": ["1.0.1.0/24", "2400:da00::/32"], "PRIVATE": ["10.0.0.0/8"]})
    (tmp_path / "custom").mkdir()
    write_geosite(tmp_path / "custom" / "mysites.dat", {"WORK": ["full:intranet.corp"]})
    monkeypatch.setenv("TUNRAY_LOCATION_ASSET", str(tmp_path))
    monkeypatch.delenv("XRAY_LOCATION_ASSET", raising=False)
    geodata.clear_cache()
    return tmp_path


def test_varint_round_trip() -> None:
    for n in (0, 1, 127, 128, 300, 2**31, 2**63 - 1):
        assert geodata.read_varint(varint(n), 0) == (n, len(varint(n)))


def test_decode_geosite_types_and_attrs(asset_dir: Path) -> None:
    entries = GeoAssets().geosite("geosite.dat", "cn")
    assert [(d.type, d.value) for d in entries] == [
        (DOMAIN, "example.cn"),
        (DOMAIN, "ads.example.cn"),
        (FULL, "tracker.cn"),
        (SUBSTR, "baidu"),
        (REGEX, r"^cdn[0-9]+\.cn$"),
    ]
    assert entries[2].attrs == {"ads", "tracking"}


def test_decode_geoip(asset_dir: Path) -> None:
    cidrs = GeoAssets().geoip("geoip.dat", "CN")
    assert cidrs == [(bytes([1, 0, 1, 0]), 24), (bytes.fromhex("2400da00") + bytes(12), 32)]


def test_geosite_rules_through_env(asset_dir: Path) -> None:
    m = DomainMatcher.compile(["geosite:cn"], "domain")
    for d in ("www.example.cn", "tracker.cn", "map.baidu.com", "cdn12.cn"):
        assert m.match(d), d
    assert not m.match("www.tracker.cn") and not m.match("cdnx.cn")
    ads = DomainMatcher.compile(["geosite:CN@ads"], "domain")
    assert ads.match("x.ads.example.cn") and ads.match("tracker.cn")
    assert not ads.match("www.example.cn")
    both = DomainMatcher.compile(["geosite:cn@ads@tracking"], "domain")
    assert both.match("tracker.cn") and not both.match("x.ads.example.cn")
    not_cn = DomainMatcher.compile(["geosite:geolocation-!cn@!cn"], "domain")
    assert not_cn.match("googleadservices.com") and not not_cn.match("google.com")
    for form in ("ext:mysites.dat:work", "ext-site:mysites.dat:WORK", "ext-domain:mysites.dat:work"):
        with pytest.raises(ConfigError):  # not in the asset dir itself
            DomainMatcher.compile([form], "domain")
    m2 = DomainMatcher.compile([f"ext:{asset_dir}/custom/mysites.dat:work"], "domain")
    assert m2.match("intranet.corp")


def test_ext_forms_find_files_in_the_asset_dir(asset_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNRAY_LOCATION_ASSET", str(asset_dir / "custom"))
    for form in ("ext:mysites.dat:work", "ext-site:mysites.dat:WORK", "ext-domain:mysites.dat:work"):
        assert DomainMatcher.compile([form], "domain").match("intranet.corp"), form


def test_xray_location_asset_also_works(asset_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNRAY_LOCATION_ASSET")
    monkeypatch.setenv("XRAY_LOCATION_ASSET", str(asset_dir))
    assert IPMatcher.compile(["geoip:cn"], "ip").match("2400:da00::1")


def test_file_beats_builtin_private(asset_dir: Path) -> None:
    assert DomainMatcher.compile(["geosite:private"], "d").match("only-in-file.lan")
    assert not DomainMatcher.compile(["geosite:private"], "d").match("router.lan")
    assert not IPMatcher.compile(["geoip:private"], "d").match("192.168.1.1")


def test_unknown_code_and_bad_file(asset_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"domain\[1\].*'NOPE' not found"):
        DomainMatcher.compile(["domain:a.b", "geosite:nope"], "domain")
    (asset_dir / "broken.dat").write_bytes(b"\x0a\xff\xff\xff")
    with pytest.raises(ConfigError, match="truncated"):
        DomainMatcher.compile(["ext:broken.dat:x"], "domain")


def test_index_skips_other_entries_and_first_duplicate_wins() -> None:
    data = geoip_bytes({"A": ["1.1.1.0/24"]}) + geoip_bytes({"A": ["2.2.2.0/24"], "B": ["3.3.3.0/24"]})
    index = geodata.index_file(data)
    assert set(index) == {"A", "B"}
    s, e = index["A"]
    assert data[s:e] == encode_geoip("A", ["1.1.1.0/24"])


def test_decode_rejects_truncation() -> None:
    data = geosite_bytes({"X": ["full:a.example"]})
    with pytest.raises(GeoDataError):
        geodata.index_file(data[:-3])


def test_cache_is_shared_between_assets(asset_dir: Path) -> None:
    a = GeoAssets().geosite("geosite.dat", "cn")
    b = GeoAssets().geosite("geosite.dat", "CN")
    assert a is b
    write_geosite(asset_dir / "geosite.dat", {"CN": ["full:changed.cn"]})
    import os

    st = os.stat(asset_dir / "geosite.dat")
    os.utime(asset_dir / "geosite.dat", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert [d.value for d in GeoAssets().geosite("geosite.dat", "cn")] == ["changed.cn"]
