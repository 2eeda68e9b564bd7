"""XTLS/Xray-examples client configs through ``tunray run -test``, placeholders filled.

The corpus is kept in tests/fixtures/xray-examples (see its README for the commit); no
test fetches anything.  :data:`EXPECTED` is the table of outcomes: ``OK`` configs use
only what tunray provides and must pass; ``needs(...)`` configs need a feature another
plugin is adding (REALITY, XHTTP) and fail naming the field until that plugin is
installed, when the expectation flips to ``OK`` by itself; ``refused(...)`` configs need
what tunray does not provide (vmess, trojan, shadowsocks, kcp, reverse, ...) and must fail
with exactly one ``config error:`` line naming that field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from tunray.cli import main
from tunray.config.errors import EXIT_CONFIG
from tunray.plugin.manager import PluginManager
from tunray.routing.geodata_writer import write_geoip, write_geosite
from xray_examples_fill import fill

CORPUS = Path(__file__).parent.parent / "fixtures" / "xray-examples"


@dataclass(frozen=True)
class Expect:
    field: str = ""  # "" = passes
    needs: tuple[str, ...] = ()  # registry transport names that make it pass


OK = Expect()


def refused(field: str) -> Expect:
    return Expect(field)


def needs(field: str, *features: str) -> Expect:
    return Expect(field, features)


REALITY = "security:reality"
XHTTP = "xhttp"
PROTOCOL = "outbounds[0].protocol"
NETWORK = "outbounds[0].streamSettings.network"
SECURITY = "outbounds[0].streamSettings.security"
H3 = "outbounds[0].streamSettings.tlsSettings.alpn"
AIO = "All-in-One-fallbacks-Nginx/client.configs/"

EXPECTED: dict[str, Expect] = {
    AIO + "ShadowSocks-H2-TLS.jsonc": refused(PROTOCOL),
    AIO + "ShadowSocks-TCP-TLS.jsonc": refused(PROTOCOL),
    AIO + "ShadowSocks-WS-TLS.jsonc": refused(PROTOCOL),
    AIO + "ShadowSocks-gRPC.jsonc": refused(PROTOCOL),
    AIO + "Trojan-H2-TLS.jsonc": refused(PROTOCOL),
    AIO + "Trojan-TCP-TLS.jsonc": refused(PROTOCOL),
    AIO + "Trojan-WS-TLS.jsonc": refused(PROTOCOL),
    AIO + "Trojan-gRPC-TLS.jsonc": refused(PROTOCOL),
    AIO + "VMESS-H2-TLS.jsonc": refused(PROTOCOL),
    AIO + "VMESS-TCP-TLS.jsonc": refused(PROTOCOL),
    AIO + "VMESS-WS-TLS.jsonc": refused(PROTOCOL),
    AIO + "VMESS-gRPC-TLS.jsonc": refused(PROTOCOL),
    AIO + "Vless-H2-TLS.jsonc": refused(NETWORK),  # "h2"/"http" was removed from Xray too
    AIO + "Vless-TCP-TLS.jsonc": OK,  # raw + TLS + the HTTP header obfuscation
    AIO + "Vless-TCP-XTLS.jsonc": OK,
    AIO + "Vless-WS-TLS.jsonc": OK,
    AIO + "Vless-gRPC-TLS.jsonc": OK,
    "Hysteria2/client.jsonc": refused(PROTOCOL),
    "MITM-Domain-Fronting/config.jsonc": refused("inbounds[0].streamSettings.tlsSettings.certificates[0]"),
    "ReverseProxy/Shadowsocks-2022/bridge.jsonc": refused("reverse"),
    "ReverseProxy/Shadowsocks-2022/client.jsonc": refused(PROTOCOL),
    "ReverseProxy/VLESS-TCP-XTLS-WS/bridge.jsonc": refused("reverse"),
    "ReverseProxy/VLESS-TCP-XTLS-WS/client_tcp.jsonc": OK,
    "ReverseProxy/VLESS-TCP-XTLS-WS/client_ws.jsonc": OK,
    "ReverseProxy/Vmess-TCP/bridge.jsonc": refused("reverse"),
    "ReverseProxy/Vmess-TCP/client.jsonc": refused(PROTOCOL),
    "Serverless-for-Iran/serverless_for_Iran.jsonc": refused("inbounds[0].streamSettings.sockopt.tcpKeepAliveIdle"),
    "Serverless-for-Iran/serverless_with_mitm_for_Iran.jsonc": refused("inbounds[2].streamSettings.tlsSettings.certificates[0].usage"),
    "Shadowsocks-TCP/client.jsonc": refused(PROTOCOL),
    "Socks5-TLS/config_client.jsonc": refused(PROTOCOL),  # a socks *outbound*
    "Trojan-TCP-TLS (minimal)/config_client.jsonc": refused(PROTOCOL),
    "Trojan-gRPC-Caddy2／Nginx/client.jsonc": refused(PROTOCOL),
    "VLESS-GRPC/client.jsonc": OK,
    "VLESS-HTTP-Caddy/VLESS-H2C-Caddy/client.jsonc": refused(NETWORK),
    "VLESS-HTTP-Caddy/VLESS-H3-Caddy/client.jsonc": refused(NETWORK),
    "VLESS-HTTP-Caddy/VLESS-H3-To-H2C-Caddy/client.jsonc": refused(NETWORK),
    "VLESS-TCP/config_client.jsonc": OK,
    "VLESS-TCP-REALITY (without being stolen)/config_client.jsonc": needs(SECURITY, REALITY),
    "VLESS-TCP-TLS/config_client.jsonc": OK,
    "VLESS-TCP-TLS (maximal by rprx)/config_client.jsonc": OK,
    "VLESS-TCP-TLS (minimal by rprx)/config_client.jsonc": OK,
    "VLESS-TCP-TLS-WS/config_client_tcp_tls.jsonc": OK,
    "VLESS-TCP-TLS-WS/config_client_ws_tls.jsonc": OK,
    # the corpus writes "tag" where a rule needs "outboundTag": Xray rejects it as well
    "VLESS-TCP-TLS-proxy protocol/config_client.jsonc": refused("routing.rules[0]"),
    "VLESS-TCP-XTLS-Vision/config_client.jsonc": OK,
    "VLESS-TCP-XTLS-Vision-REALITY/config_client.jsonc": needs(SECURITY, REALITY),
    "VLESS-TLS-SplitHTTP-CaddyNginx/client.jsonc": needs(NETWORK, XHTTP),  # splithttp = xhttp
    "VLESS-TLS-SplitHTTP-H3/client.jsonc": refused(H3),  # XHTTP over HTTP/3 (QUIC): not supported
    "VLESS-WSS-Nginx/client.jsonc": OK,
    "VLESS-XHTTP-Reality/minimal-steal_others/client-bypass-cn.jsonc": needs(NETWORK, XHTTP, REALITY),
    "VLESS-XHTTP-Reality/minimal-steal_others/client.jsonc": needs(NETWORK, XHTTP, REALITY),
    "VLESS-XHTTP3-Nginx/client.jsonc": refused(H3),  # XHTTP over HTTP/3 (QUIC): not supported
    "VLESS-gRPC-REALITY/config_client.jsonc": needs(SECURITY, REALITY),
    "VLESS-mKCPSeed/config_client.jsonc": refused(NETWORK),
    "VMess-HTTP/config_client.jsonc": refused(PROTOCOL),
    "VMess-HTTP2/config_client.jsonc": refused(PROTOCOL),
    "VMess-TCP/config_client.jsonc": refused(PROTOCOL),
    "VMess-TCP-TLS/config_client.jsonc": refused(PROTOCOL),
    "VMess-Websocket/config_client.jsonc": refused(PROTOCOL),
    "VMess-Websocket-TLS/config_client.jsonc": refused(PROTOCOL),
    "VMess-mKCPSeed/config_client.jsonc": refused(PROTOCOL),
}


def test_the_table_covers_the_whole_corpus() -> None:
    files = {str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*.json*")}
    assert files == set(EXPECTED), (files ^ set(EXPECTED))


@pytest.fixture(scope="module")
def installed() -> set[str]:
    registry = PluginManager().registry
    return {name for name in (REALITY, XHTTP) if registry.transport(name) is not None}


@pytest.fixture
def geodata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-ins for the geoip.dat/geosite.dat a user installs beside Xray (only the codes the corpus names)."""
    write_geoip(tmp_path / "geoip.dat", {c: ["192.0.2.0/24"] for c in ("private", "cn", "ir", "cloudflare", "cloudfront")})
    sites = ("private", "cn", "category-ads-all", "category-ir", "meta", "reddit", "x", "youtube")
    write_geosite(tmp_path / "geosite.dat", {c: [f"{c}.example"] for c in sites})
    monkeypatch.setenv("TUNRAY_LOCATION_ASSET", str(tmp_path))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_xray_example(name: str, installed: set[str], geodata: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expect = EXPECTED[name]
    config = tmp_path / "config.json"
    config.write_text(json.dumps(fill((CORPUS / name).read_text(encoding="utf-8"))))
    rc = main(["run", "-test", "-c", str(config)])
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("config error:")]
    if not expect.field or (expect.needs and set(expect.needs) <= installed):
        assert rc == 0 and "Configuration OK." in out, f"{name}: {err}"
        assert not errors
        return
    assert rc == EXIT_CONFIG, f"{name} should fail at {expect.field}: rc={rc} {out} {err}"
    assert len(errors) == 1, err
    # every line is in the one-line form: warnings, then the one error
    assert all(line.startswith(("config warning: ", "config error: ")) for line in err.splitlines()), err
    assert errors[0].startswith(f"config error: {expect.field}:"), f"{name}: {errors[0]}"
    assert "Traceback" not in err
