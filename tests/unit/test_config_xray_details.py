"""Config details Xray users rely on: protocol aliases, warnings in the one-line form."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tunray.config.model import build_config
from tunray.plugin.manager import PluginManager


def _test(tmp_path: Path, cfg: dict) -> subprocess.CompletedProcess[str]:  # type: ignore[type-arg]
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg))
    return subprocess.run([sys.executable, "-m", "tunray", "run", "-test", "-c", str(path)], capture_output=True, text=True, timeout=60)


def test_direct_and_block_are_freedom_and_blackhole() -> None:
    raw = {"outbounds": [{"protocol": "direct", "tag": "d"}, {"protocol": "Block", "tag": "b"}]}
    config = build_config(raw, PluginManager().registry)
    assert [(o.protocol, o.cls.protocol) for o in config.outbounds] == [("freedom", "freedom"), ("blackhole", "blackhole")]


def test_unknown_top_level_key_warns_in_the_one_line_form(tmp_path: Path) -> None:
    out = _test(tmp_path, {"remarks": "mine", "outbounds": [{"protocol": "freedom", "settings": {"nonsense": 1}}]})
    assert out.returncode == 0 and out.stdout.strip() == "Configuration OK."
    assert out.stderr.splitlines() == [
        "config warning: remarks: unknown top-level section ignored",
        "config warning: outbounds[0].settings.nonsense: unknown field ignored",
    ]


def test_freedom_timeout_is_not_a_silently_accepted_key(tmp_path: Path) -> None:
    # Xray's freedom has no "timeout": it is unknown, and tunray says so instead of claiming it
    out = _test(tmp_path, {"outbounds": [{"protocol": "freedom", "settings": {"timeout": 10}}]})
    assert "config warning: outbounds[0].settings.timeout: unknown field ignored" in out.stderr


def test_vless_testpre_is_refused(tmp_path: Path) -> None:
    ob = {"protocol": "vless", "settings": {"address": "127.0.0.1", "port": 1, "id": "27848739-7e62-4138-9fd3-098a63964b6b", "testpre": 2}}
    out = _test(tmp_path, {"outbounds": [ob]})
    assert out.returncode == 23 and out.stderr.startswith("config error: outbounds[0].settings.testpre: ") and "not supported" in out.stderr


def test_keys_without_effect_are_refused_when_set(tmp_path: Path) -> None:
    for cfg, path in (
        ({"log": {"dnsLog": True}}, "log.dnsLog"),
        ({"policy": {"levels": {"0": {"statsUserUplink": True}}}}, "policy.levels.0.statsUserUplink"),
        ({"outbounds": [{"protocol": "vless", "settings": {"address": "127.0.0.1", "port": 1, "id": "a", "encryption": "none"},
                         "streamSettings": {"security": "tls", "tlsSettings": {"cipherSuites": "TLS_AES_128_GCM_SHA256"}}}]},
         "outbounds[0].streamSettings.tlsSettings.cipherSuites"),
    ):
        out = _test(tmp_path, cfg)
        assert out.returncode == 23 and out.stderr.startswith(f"config error: {path}: ") and "not supported" in out.stderr, out.stderr
    # the same keys with their default values stay accepted (Xray configs often spell them out)
    assert _test(tmp_path, {"log": {"dnsLog": False}, "policy": {"levels": {"0": {"statsUserOnline": False}}}}).returncode == 0


def test_the_version_section_is_said_not_to_apply(tmp_path: Path) -> None:
    out = _test(tmp_path, {"version": {"min": "1.8.0"}, "outbounds": [{"protocol": "freedom"}]})
    assert out.returncode == 0
    assert out.stderr.splitlines() == ["config warning: version: Xray's version check does not apply to tunray; not checked"]
