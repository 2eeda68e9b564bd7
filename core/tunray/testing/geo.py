"""Small ``geosite.dat``/``geoip.dat`` files for tests and for validating the example configs.

The real files (v2fly/Loyalsoldier) are large downloads; tests need only the codes the
example configs name, filled with ``.test`` names and documentation addresses.
Point ``TUNRAY_LOCATION_ASSET`` at the directory :func:`write_test_geodata` fills.
"""

from __future__ import annotations

from pathlib import Path

from tunray.routing.geodata_writer import write_geoip, write_geosite

GEOSITE = {
    "cn": ["domain:cn.test"],
    "geolocation-!cn": ["domain:proxied.test"],
    "category-ads-all": ["domain:ads.test"],
    "private": ["domain:lan", "domain:local"],
}
GEOIP = {
    "private": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "fc00::/7"],
    "cn": ["192.0.2.0/25"],
}


def write_test_geodata(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    write_geosite(directory / "geosite.dat", GEOSITE)
    write_geoip(directory / "geoip.dat", GEOIP)
    return directory
