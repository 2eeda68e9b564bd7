"""Settings parsing and config-time validation through the core (``tunray run -test``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tunray.config.errors import EXIT_CONFIG, ConfigError
from tunray.config.model import STREAM_SCHEMA, build_config
from tunray.net.address import Destination
from tunray.plugin.manager import PluginManager
from tunray_transports.settings import grpc_options, httpupgrade_options, split_early_data, ws_options

TUNRAY = str(Path(sys.executable).with_name("tunray"))


def stream(raw: dict[str, Any]) -> Any:
    return STREAM_SCHEMA.parse(raw, "streamSettings")


def config(stream_settings: dict[str, Any]) -> dict[str, Any]:
    return {"outbounds": [{"protocol": "freedom", "tag": "x", "streamSettings": stream_settings}]}


def run_test(tmp_path: Path, cfg: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return subprocess.run(
        [TUNRAY, "run", "-test", "-c", str(path)], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    "settings",
    [
        {"network": "ws", "wsSettings": {"path": "/ray?ed=2048", "host": "cdn.example"}},
        {"network": "websocket"},
        {"network": "httpupgrade", "httpupgradeSettings": {"path": "/up"}},
        {"network": "grpc", "grpcSettings": {"serviceName": "svc", "multiMode": True, "idle_timeout": 60}},
        {"network": "gun", "gunSettings": {"serviceName": "/a/b/Tun|TunMulti"}},
    ],
)
def test_cli_accepts_transport_configs(tmp_path: Path, settings: dict[str, Any]) -> None:
    res = run_test(tmp_path, config(settings))
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize(
    ("settings", "path"),
    [
        ({"network": "ws", "wsSettings": {"path": 5}}, "outbounds[0].streamSettings.wsSettings.path"),
        (
            {"network": "ws", "wsSettings": {"path": "/x?ed=lots"}},
            "outbounds[0].streamSettings.wsSettings.path",
        ),
        (
            {"network": "httpupgrade", "httpupgradeSettings": {"headers": {"Host": "h"}}},
            "outbounds[0].streamSettings.httpupgradeSettings.headers.Host",
        ),
        (
            {"network": "grpc", "grpcSettings": {"multiMode": "yes"}},
            "outbounds[0].streamSettings.grpcSettings.multiMode",
        ),
        (
            {"network": "gun", "gunSettings": {"serviceName": "/Tun"}},
            "outbounds[0].streamSettings.gunSettings.serviceName",
        ),
    ],
)
def test_cli_rejects_bad_settings_naming_the_path(
    tmp_path: Path, settings: dict[str, Any], path: str
) -> None:
    res = run_test(tmp_path, config(settings))
    assert res.returncode == EXIT_CONFIG, (res.stdout, res.stderr)
    assert path + ":" in res.stderr
    assert "Traceback" not in res.stderr


def test_build_config_uses_the_registered_layers() -> None:
    pm = PluginManager()
    cfg = build_config(config({"network": "websocket", "wsSettings": {"path": "/a"}}), pm.registry)
    sc = cfg.outbounds[0].stream
    assert sc is not None and sc.transport.name == "ws"
    with pytest.raises(ConfigError) as info:
        build_config(config({"network": "ws", "wsSettings": {"path": ["x"]}}), pm.registry)
    assert info.value.path == "outbounds[0].streamSettings.wsSettings.path"


@pytest.mark.parametrize(
    ("path", "clean", "ed"),
    [
        ("", "/", 0),
        ("ray", "/ray", 0),
        ("/ray?ed=2048", "/ray", 2048),
        ("/ray?a=1&ed=10&b=2", "/ray?a=1&b=2", 10),
        ("/ray?a=1", "/ray?a=1", 0),
    ],
)
def test_early_data_parsing(path: str, clean: str, ed: int) -> None:
    assert split_early_data(path, "p") == (clean, ed)


def test_host_priority_and_headers() -> None:
    dest = Destination.parse("192.0.2.1:443")
    tls = {"security": "tls", "tlsSettings": {"serverName": "sni.example"}}
    assert ws_options(stream({"network": "ws"}), "s").host_for(dest) == "192.0.2.1"
    assert ws_options(stream({"network": "ws", **tls}), "s").host_for(dest) == "sni.example"
    opts = ws_options(stream({"network": "ws", **tls, "wsSettings": {"host": "h.example"}}), "s")
    assert opts.host_for(dest) == "h.example"
    # the deprecated headers.Host still works for ws, and a User-Agent is always sent
    opts = ws_options(stream({"network": "ws", "wsSettings": {"headers": {"Host": "old.example"}}}), "s")
    assert opts.host_for(dest) == "old.example"
    assert [k for k, _ in opts.headers] == ["User-Agent"]
    opts = httpupgrade_options(
        stream({"network": "httpupgrade", "httpupgradeSettings": {"headers": {"user-agent": "u"}}}), "s"
    )
    assert opts.headers == (("user-agent", "u"),)
    assert ws_options(stream({"network": "ws"}), "s").host_for(Destination.parse("[::1]:80")) == "[::1]"


@pytest.mark.parametrize(
    ("service", "multi", "method"),
    [
        ("", False, "//Tun"),
        ("svc", False, "/svc/Tun"),
        ("svc", True, "/svc/TunMulti"),
        ("a/b", False, "/a%2Fb/Tun"),
        ("/my/sample/path1|path2", False, "/my/sample/path1"),
        ("/my/sample/path1|path2", True, "/my/sample/path2"),
        ("/my/sample/path1", True, "/my/sample/path1"),
    ],
)
def test_grpc_method_paths(service: str, multi: bool, method: str) -> None:
    raw = {"network": "grpc", "grpcSettings": {"serviceName": service, "multiMode": multi}}
    assert grpc_options(stream(raw), "s").method_path == method


def test_grpc_authority_priority() -> None:
    ip = Destination.parse("192.0.2.1:443")
    name = Destination.parse("srv.example:443")
    plain = grpc_options(stream({"network": "grpc"}), "s")
    assert plain.authority_for(ip) == "192.0.2.1:443" and plain.authority_for(name) == "srv.example"
    tls = grpc_options(
        stream({"network": "grpc", "security": "tls", "tlsSettings": {"serverName": "sni"}}), "s"
    )
    assert tls.authority_for(name) == "sni"
    explicit = grpc_options(stream({"network": "grpc", "grpcSettings": {"authority": "auth"}}), "s")
    assert explicit.authority_for(name) == "auth"
