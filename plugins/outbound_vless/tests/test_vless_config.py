"""VLESS outbound settings: both JSON forms, and one-line errors naming the path."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from tunray.cli import main
from tunray.config.errors import EXIT_CONFIG, ConfigError, NotSupported
from tunray.config.model import build_config
from tunray.plugin.manager import PluginManager
from tunray.runtime import Runtime
from tunray_vless.outbound import VlessOutbound
from tunray_vless.settings import FLOW_VISION

UID = "27848739-7e62-4138-9fd3-098a63964b6b"
CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def _cfg(settings: dict[str, Any], stream: dict[str, Any] | None = None) -> dict[str, Any]:
    ob: dict[str, Any] = {"protocol": "vless", "settings": settings}
    if stream is not None:
        ob["streamSettings"] = stream
    return {"log": {"loglevel": "none", "access": "none"}, "outbounds": [ob]}


TLS = {"network": "raw", "security": "tls", "tlsSettings": {"serverName": "example.com"}}


def _outbound(cfg: dict[str, Any]) -> VlessOutbound:
    rt = Runtime.from_raw(cfg)
    ob = rt.outbound_list[0]
    assert isinstance(ob, VlessOutbound)
    return ob


def test_legacy_and_simplified_forms_agree() -> None:
    user = {"id": UID, "flow": "xtls-rprx-vision-udp443", "encryption": "none", "level": 0}
    legacy = _outbound(_cfg({"vnext": [{"address": "example.com", "port": 443, "users": [user]}]}, TLS))
    simple = _outbound(_cfg({"address": "example.com", "port": 443, **user}, TLS))
    assert legacy.spec == simple.spec
    assert legacy.spec.user_id == uuid.UUID(UID)
    assert legacy.spec.flow == FLOW_VISION and legacy.spec.udp443
    assert str(legacy.spec.server) == "tcp:example.com:443"


def test_short_string_id_maps_to_uuid_v5() -> None:
    ob = _outbound(_cfg({"address": "1.2.3.4", "port": 1, "id": "example", "encryption": "none"}))
    assert str(ob.spec.user_id) == "feb54431-301b-52bb-a6dd-e1e93e81bb9e"


@pytest.mark.parametrize(
    ("settings", "path", "words"),
    [
        ({"address": "a", "port": 1, "id": UID}, "outbounds[0].settings.encryption", "none"),
        ({"address": "a", "port": 1, "id": UID, "encryption": "aes"}, "outbounds[0].settings.encryption", "none"),
        ({"address": "a", "port": 1, "id": "", "encryption": "none"}, "outbounds[0].settings.id", "UUID"),
        (
            {"vnext": [{"address": "a", "port": 1, "users": [{"id": "x" * 31, "encryption": "none"}]}]},
            "outbounds[0].settings.vnext[0].users[0].id",
            "UUID",
        ),
        (
            {"address": "a", "port": 1, "id": UID, "encryption": "none", "flow": "xtls-rprx-origin"},
            "outbounds[0].settings.flow",
            "xtls-rprx-vision",
        ),
        (
            {"vnext": [{"address": "a", "port": 1, "users": [{"id": UID, "encryption": "none"}] * 2}]},
            "outbounds[0].settings.vnext[0].users",
            "exactly one user",
        ),
        (
            {"vnext": [{"address": "a", "port": 1, "users": [{"id": UID, "encryption": "none"}]}] * 2},
            "outbounds[0].settings.vnext",
            "exactly one server",
        ),
        ({}, "outbounds[0].settings", "address"),
        ({"address": "a", "id": UID, "encryption": "none"}, "outbounds[0].settings.port", "required"),
    ],
)
def test_errors_name_the_path(settings: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(_cfg(settings), PluginManager().registry)
    assert info.value.path == path and words in info.value.message, str(info.value)


def test_mlkem_encryption_is_not_supported() -> None:
    settings = {"address": "a", "port": 1, "id": UID, "encryption": "mlkem768x25519plus.native.0rtt.AAAA"}
    with pytest.raises(NotSupported) as info:
        build_config(_cfg(settings), PluginManager().registry)
    assert info.value.path == "outbounds[0].settings.encryption"


def test_vision_without_tls_is_refused_at_validation() -> None:
    settings = {"address": "a", "port": 1, "id": UID, "encryption": "none", "flow": FLOW_VISION}
    with pytest.raises(ConfigError, match="XTLS only supports TLS") as info:
        build_config(_cfg(settings), PluginManager().registry)  # what `tunray run -test` runs
    assert info.value.path == "outbounds[0].settings.flow"
    _outbound(_cfg(settings, TLS))


@pytest.mark.parametrize(
    ("settings", "stream", "expected"),
    [
        (
            {"address": "a", "port": 1, "id": UID, "encryption": ""},
            None,
            "config error: outbounds[0].settings.encryption: ",
        ),
        ({"address": "a", "port": 1, "id": "", "encryption": "none"}, None, "config error: outbounds[0].settings.id: "),
        (
            {"address": "a", "port": 1, "id": UID, "encryption": "none", "flow": "xtls-rprx-origin"},
            None,
            "config error: outbounds[0].settings.flow: ",
        ),
        (
            {"vnext": [{"address": "a", "port": 1, "users": [{"id": UID, "encryption": "none"}] * 2}]},
            None,
            "config error: outbounds[0].settings.vnext[0].users: ",
        ),
        (
            {"address": "a", "port": 1, "id": UID, "encryption": "none"},
            {"security": "tls", "tlsSettings": {"allowInsecure": True}},
            "config error: outbounds[0].streamSettings.tlsSettings.allowInsecure: ",
        ),
    ],
)
def test_cli_reports_broken_configs_in_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    settings: dict[str, Any],
    stream: dict[str, Any] | None,
    expected: str,
) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_cfg(settings, stream)))
    code = main(["run", "-test", "-c", str(path)])
    out = capsys.readouterr()
    text = (out.out + out.err).strip()
    assert code == EXIT_CONFIG, text
    assert len(text.splitlines()) == 1 and text.startswith(expected), text
    assert "Traceback" not in text


@pytest.mark.parametrize("name", ["vless-tls.json", "vless-vision.json", "vless-ws.json", "vless-grpc.json"])
def test_example_configs_pass_run_test(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "-test", "-c", str(CONFIGS / name)])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    assert "Configuration OK" in out.out
