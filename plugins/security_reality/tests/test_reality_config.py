"""``realitySettings`` validation: what Xray accepts on a client, what it refuses, with the JSON path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tunray.config.errors import ConfigError
from tunray.config.model import build_config
from tunray.plugin.manager import PluginManager
from tunray_reality.settings import parse_options

GOOD = {"serverName": "decoy.test", "publicKey": "E59WjnvZcQMu7tR7_BgyhycuEdBS-CtKxfImRCdAvFM", "shortId": "0123456789abcdef"}
PATH = "outbounds[0].streamSettings.realitySettings"
CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def _parse(**changes: Any) -> Any:
    raw = {**GOOD, **changes}
    return parse_options({k: v for k, v in raw.items() if v is not None}, PATH)


def test_good_settings_and_defaults() -> None:
    opts = _parse(shortId="ab")
    assert opts.short_id == bytes.fromhex("ab00000000000000")
    assert opts.fingerprint == "chrome" and opts.spider_x == "/"
    assert _parse(shortId="").short_id == bytes(8)
    assert _parse(publicKey=None, password=GOOD["publicKey"]).public_key == opts.public_key


@pytest.mark.parametrize(
    ("changes", "path", "message"),
    [
        ({"fingerprint": "unsafe"}, "fingerprint", "refused"),
        ({"fingerprint": "HelloGolang"}, "fingerprint", "refused"),
        ({"fingerprint": "netscape"}, "fingerprint", "unknown"),
        ({"publicKey": None}, "publicKey", "required"),
        ({"publicKey": "abc"}, "publicKey", "not a 32-byte key"),
        ({"publicKey": None, "password": "abc"}, "password", "not a 32-byte key"),
        ({"shortId": "0123456789abcdef0"}, "shortId", "too long"),
        ({"shortId": "abc"}, "shortId", "even number"),
        ({"shortId": "zz"}, "shortId", "even number"),
        ({"spiderX": "x"}, "spiderX", "must start with"),
        ({"mldsa65Verify": "AAAA"}, "mldsa65Verify", "not supported"),
        ({"masterKeyLog": "/tmp/k"}, "masterKeyLog", "not supported"),
        ({"serverNames": ["a"]}, "serverNames", 'use "serverName"'),
        ({"shortIds": ["ab"]}, "shortIds", 'use "shortId"'),
        ({"privateKey": "x"}, "privateKey", "server setting"),
        ({"dest": "1.2.3.4:443"}, "dest", "server setting"),
        ({"target": 443}, "target", "server setting"),
        ({"minClientVer": "1.8.0"}, "minClientVer", "server setting"),
    ],
)
def test_refused_with_the_json_path(changes: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _parse(**changes)
    assert err.value.path == f"{PATH}.{path}"
    assert message in err.value.message


def test_reality_refuses_websocket_as_xray_does() -> None:
    cfg = json.loads((CONFIGS / "vless-reality-vision.json").read_text())
    cfg["outbounds"][0]["streamSettings"]["network"] = "ws"
    with pytest.raises(ConfigError) as err:
        build_config(cfg, PluginManager().registry)
    assert err.value.path.endswith("streamSettings.network")
