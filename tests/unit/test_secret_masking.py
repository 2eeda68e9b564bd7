"""Config errors never echo a credential: ids, passwords, keys are masked in the one-line error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tunray.cli import main
from tunray.config.errors import EXIT_CONFIG, ConfigError, is_secret
from tunray.config.schema import Settings

SECRET = "0123456789abcdef-not-a-real-uuid-XYZ"  # 36 characters, not a UUID, too long for UUIDv5


def _vless(user: dict[str, Any]) -> dict[str, Any]:
    return {
        "inbounds": [],
        "outbounds": [
            {
                "protocol": "vless",
                "settings": {"vnext": [{"address": "127.0.0.1", "port": 443, "users": [user]}]},
            }
        ],
    }


@pytest.mark.parametrize(
    ("user", "where"),
    [
        ({"id": SECRET, "encryption": "none"}, "users[0].id"),
        ({"id": 12345, "encryption": "none"}, "users[0].id"),
    ],
)
def test_a_malformed_id_is_not_echoed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], user: dict[str, Any], where: str
) -> None:
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(_vless(user)))
    assert main(["run", "-test", "-c", str(cfg)]) == EXIT_CONFIG
    err = capsys.readouterr().err.strip()
    assert where in err, err
    assert SECRET not in err and SECRET[:8] not in err, err
    if isinstance(user["id"], str):
        assert "<hidden, 36 chars>" in err, err


def test_only_credential_paths_are_masked() -> None:
    assert is_secret("outbounds[0].settings.vnext[0].users[0].id")
    assert is_secret("outbounds[1].streamSettings.realitySettings.shortIds[3]")
    assert is_secret("x.password")
    assert not is_secret("outbounds[0].settings.vnext[0].users[0].flow")
    assert "'xtls'" in str(ConfigError("a.flow", "unknown flow 'xtls'"))
    assert "'hunter2'" not in str(ConfigError("a.password", "bad value 'hunter2'"))


def test_settings_repr_hides_credentials() -> None:
    values = {"id": SECRET, "password": "hunter2", "flow": "xtls-rprx-vision"}
    text = repr(Settings(values, dict(values)))
    assert SECRET not in text and "hunter2" not in text
    assert "xtls-rprx-vision" in text
