"""The broken-config table: each bad config fails ``tunray run -test`` with one line naming its JSON path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tunray.cli import main
from tunray.config.errors import EXIT_CONFIG

FREEDOM = {"protocol": "freedom", "tag": "direct"}
TUN = {"protocol": "tun", "tag": "tun-in", "settings": {"name": "tr-bad0"}}


def cfg(**sections: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"outbounds": [FREEDOM]}
    base.update(sections)
    return base


CASES: list[tuple[str, dict[str, Any], str]] = [
    ("log level", cfg(log={"loglevel": "loud"}), "log.loglevel: expected one of"),
    ("log access type", cfg(log={"access": 5}), "log.access: expected a string"),
    ("inbounds not a list", cfg(inbounds={"protocol": "tun"}), "inbounds: expected an array"),
    ("inbound not object", cfg(inbounds=["tun"]), "inbounds[0]: expected an object"),
    ("inbound no protocol", cfg(inbounds=[{"tag": "x"}]), "inbounds[0].protocol: is required"),
    ("inbound unknown protocol", cfg(inbounds=[{"protocol": "telepathy"}]), "inbounds[0].protocol: unknown protocol 'telepathy'"),
    ("inbound tag type", cfg(inbounds=[{"protocol": "tun", "tag": 7}]), "inbounds[0].tag: expected a string"),
    ("duplicate inbound tag", cfg(inbounds=[TUN, dict(TUN, settings={"name": "tr-bad1"})]), "inbounds[1].tag: duplicate tag 'tun-in'"),
    ("sniffing type", cfg(inbounds=[dict(TUN, sniffing={"enabled": "yes"})]), "inbounds[0].sniffing.enabled: expected true or false"),
    ("sniffing override", cfg(inbounds=[dict(TUN, sniffing={"enabled": True, "destOverride": ["smtp"]})]), "inbounds[0].sniffing.destOverride[0]: expected one of"),
    ("fakedns pool size", cfg(fakedns={"ipPool": "198.18.0.0/24", "poolSize": 256}), "fakedns.ipPool: poolSize 256 is not smaller"),
    ("fakedns pool cidr", cfg(fakedns=[{"ipPool": "198.18.0.0/33", "poolSize": 10}]), "fakedns[0].ipPool:"),
    ("tun mtu type", cfg(inbounds=[dict(TUN, settings={"MTU": "big"})]), "inbounds[0].settings.MTU: expected"),
    ("tun gateway", cfg(inbounds=[dict(TUN, settings={"gateway": ["10.0.0.1/33"]})]), "inbounds[0].settings.gateway[0]"),
    ("tun stack", cfg(inbounds=[dict(TUN, settings={"stack": "nonesuch"})]), "inbounds[0].settings.stack"),
    ("allocate", cfg(inbounds=[dict(TUN, allocate={"strategy": "random"})]), "inbounds[0].allocate: inbound 'allocate' is not supported"),
    ("outbounds not a list", {"outbounds": {"protocol": "freedom"}}, "outbounds: expected an array"),
    ("outbound no protocol", {"outbounds": [{"tag": "x"}]}, "outbounds[0].protocol: is required"),
    ("outbound unknown protocol", {"outbounds": [{"protocol": "warp"}]}, "outbounds[0].protocol: unknown protocol 'warp'"),
    ("duplicate outbound tag", {"outbounds": [FREEDOM, FREEDOM]}, "outbounds[1].tag: duplicate tag 'direct'"),
    ("freedom strategy", {"outbounds": [dict(FREEDOM, settings={"domainStrategy": "Maybe"})]}, "outbounds[0].settings.domainStrategy"),
    ("freedom fragment", {"outbounds": [dict(FREEDOM, settings={"fragment": {"packets": "tlshello"}})]}, "outbounds[0].settings.fragment: freedom.fragment is not supported"),
    ("blackhole response", {"outbounds": [{"protocol": "blackhole", "settings": {"response": {"type": "teapot"}}}]}, "outbounds[0].settings.response.type"),
    ("proxySettings", {"outbounds": [dict(FREEDOM, proxySettings={"tag": "x"})]}, "outbounds[0].proxySettings: outbound proxySettings (chaining) is not supported"),
    ("mux enabled", {"outbounds": [dict(FREEDOM, mux={"enabled": True})]}, "outbounds[0].mux: mux is not supported"),
    ("transport kcp", {"outbounds": [dict(FREEDOM, streamSettings={"network": "kcp"})]}, "outbounds[0].streamSettings.network: transport 'kcp' is not supported"),
    ("xhttp h3", {"outbounds": [dict(FREEDOM, streamSettings={"network": "xhttp", "security": "tls", "tlsSettings": {"alpn": ["h3"]}})]}, "outbounds[0].streamSettings.tlsSettings.alpn: XHTTP over HTTP/3 (QUIC) is not supported"),
    ("xhttp xmux", {"outbounds": [dict(FREEDOM, streamSettings={"network": "xhttp", "security": "tls", "xhttpSettings": {"xmux": {"maxConcurrency": 4}}})]}, "outbounds[0].streamSettings.xhttpSettings.xmux: xhttpSettings.xmux (connection sharing) is not supported"),
    ("reality server key", {"outbounds": [dict(FREEDOM, streamSettings={"security": "reality", "realitySettings": {"publicKey": "E59WjnvZcQMu7tR7_BgyhycuEdBS-CtKxfImRCdAvFM", "privateKey": "x"}})]}, "outbounds[0].streamSettings.realitySettings.privateKey: is a REALITY server setting"),
    ("sockopt mark", {"outbounds": [dict(FREEDOM, streamSettings={"sockopt": {"mark": -1}})]}, "outbounds[0].streamSettings.sockopt.mark: -1 is below the minimum 0"),
    ("sockopt dialerProxy", {"outbounds": [dict(FREEDOM, streamSettings={"sockopt": {"dialerProxy": "x"}})]}, "outbounds[0].streamSettings.sockopt.dialerProxy: sockopt.dialerProxy (chaining) is not supported"),
    ("policy level key", cfg(policy={"levels": {"gold": {}}}), "policy.levels.gold: level keys must be numbers"),
    ("policy handshake", cfg(policy={"levels": {"0": {"handshake": "fast"}}}), "policy.levels.0.handshake: expected an integer"),
    ("policy connIdle negative", cfg(policy={"levels": {"0": {"connIdle": -5}}}), "policy.levels.0.connIdle: -5 is below the minimum 0"),
    ("api section", cfg(api={"tag": "api"}), "api: the api section is not supported"),
    ("reverse section", cfg(reverse={"bridges": [{}]}), "reverse: the reverse section (reverse proxy) is not supported"),
    ("routing rule without condition", cfg(routing={"rules": [{"outboundTag": "direct"}]}), "routing.rules[0]"),
    ("routing rule without target", cfg(routing={"rules": [{"ip": ["10.0.0.0/8"]}]}), "routing.rules[0]"),
    ("routing bad cidr", cfg(routing={"rules": [{"ip": ["10.0.0.0/99"], "outboundTag": "direct"}]}), "routing.rules[0].ip[0]"),
    ("routing bad port", cfg(routing={"rules": [{"port": "80-x", "outboundTag": "direct"}]}), "routing.rules[0].port"),
    ("routing bad regexp", cfg(routing={"rules": [{"domain": ["regexp:("], "outboundTag": "direct"}]}), "routing.rules[0].domain[0]"),
    ("routing missing balancer", cfg(routing={"rules": [{"network": "tcp", "balancerTag": "nope"}]}), "routing.rules[0].balancerTag"),
    ("routing attrs", cfg(routing={"rules": [{"attrs": {":path": "/x"}, "outboundTag": "direct"}]}), "routing.rules[0].attrs"),
    ("dns server", cfg(dns={"servers": [42]}), "dns.servers[0]"),
    ("dns queryStrategy", cfg(dns={"queryStrategy": "UseIPv5"}), "dns.queryStrategy"),
]


@pytest.mark.parametrize(("name", "config", "expected"), CASES, ids=[c[0] for c in CASES])
def test_broken_config(
    name: str, config: dict[str, Any], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    code = main(["run", "-test", "-c", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_CONFIG, err
    assert "\n" not in err, f"error must be one line: {err!r}"
    assert err.startswith("config error: "), err
    assert expected in err, err
    assert "Traceback" not in err
