"""Settings validation for the ``tun`` inbound (no root needed)."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tun_helpers
from tunray.config.errors import EXIT_CONFIG, ConfigError
from tunray.config.model import Config, build_config
from tunray.plugin.manager import PluginManager
from tunray.runtime import Runtime
from tunray_tun.inbound import TunInbound
from tunray_tun.settings import effective_handshake, effective_offload, uplink_mode

REPO = Path(__file__).resolve().parents[3]


def _build(settings: dict[str, Any]) -> Config:
    pm = PluginManager(extra=[tun_helpers])
    return build_config(tun_helpers.tun_config(settings), pm.registry)


def _tun_settings(settings: dict[str, Any]) -> Any:
    return _build(settings).inbounds[0].settings


def _error(settings: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        _build(settings)
    return info.value


def test_defaults() -> None:
    s = _tun_settings({})
    assert (s.name, s.mtu, s.gateway, s.dns, s.userLevel) == ("", 1500, [], [], 0)
    assert (s.stack, s.handshake, s.offload) == ("python", "lazy", True)
    assert (s.maxFlows, s.udpTimeout, s.tcpBufferSize) == (4096, 60, 4096)
    assert s.autoSystemRoutingTable == []
    assert uplink_mode(s) == "", "no routes: autoOutboundsInterface stays off"


def test_inbound_needs_no_port_and_registers_as_tun() -> None:
    cfg = _build({})
    assert cfg.inbounds[0].protocol == "tun"
    assert issubclass(cfg.inbounds[0].cls, TunInbound)
    assert cfg.inbounds[0].port is None


def test_keys_are_case_insensitive() -> None:
    s = _tun_settings(
        {"MTU": 9000, "Name": "tr0", "AUTOSYSTEMROUTINGTABLE": ["10.9.0.0/16"], "Stack": "recording"}
    )
    assert s.mtu == 9000
    assert s.name == "tr0"
    assert s.autoSystemRoutingTable == [ipaddress.ip_network("10.9.0.0/16")]
    assert s.stack == "recording"


def test_routes_imply_auto_outbounds_interface_unless_turned_off() -> None:
    assert uplink_mode(_tun_settings({"autoSystemRoutingTable": ["0.0.0.0/0"]})) == "auto"
    assert (
        uplink_mode(_tun_settings({"autoSystemRoutingTable": ["0.0.0.0/0"], "autoOutboundsInterface": None}))
        == "auto"
    )
    assert (
        uplink_mode(_tun_settings({"autoSystemRoutingTable": ["0.0.0.0/0"], "autoOutboundsInterface": ""}))
        == ""
    )
    assert uplink_mode(_tun_settings({"autoOutboundsInterface": "eth1"})) == "eth1"


def test_gateway_and_routes_are_parsed_and_masked() -> None:
    s = _tun_settings(
        {
            "gateway": ["172.19.0.1/30", "fd00:19::1/126"],
            "autoSystemRoutingTable": ["203.0.113.7/24", "2001:db8::/32"],
            "dns": ["172.19.0.2"],
        }
    )
    assert [str(g) for g in s.gateway] == ["172.19.0.1/30", "fd00:19::1/126"]
    assert [str(r) for r in s.autoSystemRoutingTable] == ["203.0.113.0/24", "2001:db8::/32"]
    assert [str(d) for d in s.dns] == ["172.19.0.2"]


@pytest.mark.parametrize(
    ("settings", "path", "words"),
    [
        (
            {"autoSystemRoutingTable": ["10.0.0.0/8", "nope"]},
            "inbounds[0].settings.autoSystemRoutingTable[1]",
            "nope",
        ),
        ({"autoSystemRoutingTable": "10.0.0.0/8"}, "inbounds[0].settings.autoSystemRoutingTable", "array"),
        ({"gateway": ["300.1.1.1/24"]}, "inbounds[0].settings.gateway[0]", "300.1.1.1"),
        ({"gateway": ["10.0.0.1/33"]}, "inbounds[0].settings.gateway[0]", "10.0.0.1/33"),
        ({"dns": ["not-an-ip"]}, "inbounds[0].settings.dns[0]", "not an IP"),
        ({"MTU": 100}, "inbounds[0].settings.MTU", "minimum 576"),
        ({"mtu": 70000}, "inbounds[0].settings.mtu", "maximum 65535"),
        ({"name": "a-name-longer-than-15"}, "inbounds[0].settings.name", "does not match"),
        ({"handshake": "sometimes"}, "inbounds[0].settings.handshake", "lazy"),
        ({"maxFlows": 0}, "inbounds[0].settings.maxFlows", "minimum 1"),
        (
            {"autoOutboundsInterface": "bad name"},
            "inbounds[0].settings.autoOutboundsInterface",
            "does not match",
        ),
    ],
)
def test_bad_values_name_their_path(settings: dict[str, Any], path: str, words: str) -> None:
    err = _error(settings)
    assert err.path == path, str(err)
    assert words in err.message, str(err)


def test_unknown_stack_lists_installed_stacks() -> None:
    err = _error({"stack": "gvisor"})
    assert err.path == "inbounds[0].settings.stack"
    assert "'gvisor'" in err.message
    assert "recording" in err.message and "python" in err.message


def test_lazy_handshake_with_a_stack_that_cannot_hold_a_syn_is_refused() -> None:
    err = _error({"stack": "eager-only", "handshake": "lazy"})
    assert err.path == "inbounds[0].settings.handshake"
    assert "not supported" in err.message and "eager-only" in err.message and "cannot hold a SYN" in err.message
    err = _error({"stack": "eager-only", "Offload": True})
    assert err.path == "inbounds[0].settings.offload" and "not supported" in err.message


def test_a_half_open_budget_the_stack_does_not_keep_is_refused() -> None:
    for key in ("maxHalfOpen", "maxHalfOpenPerSource"):
        err = _error({"stack": "eager-only", key: 10})
        assert err.path == f"inbounds[0].settings.{key}" and "not supported" in err.message, err


def test_a_buffer_budget_the_stack_cannot_keep_is_refused() -> None:
    err = _error({"stack": "system", "gateway": ["10.7.0.1/30"], "maxBufferedBytes": 1 << 20})
    assert err.path == "inbounds[0].settings.maxBufferedBytes" and "not supported" in err.message, err
    assert "tcp_mem" in err.message
    err = _error({"maxBufferedBytes": 1000})
    assert err.path == "inbounds[0].settings.maxBufferedBytes", err


def test_capability_defaults_follow_the_stack() -> None:
    """Left out, handshake and offload default to what the stack can do; asked for, they are kept."""
    stacks = PluginManager(extra=[tun_helpers]).registry.stacks
    s = _tun_settings({"stack": "eager-only"})
    assert (effective_handshake(stacks["eager-only"], s), effective_offload(stacks["eager-only"], s)) == (
        "eager", False)
    s = _tun_settings({"stack": "eager-only", "handshake": "eager", "offload": False})
    assert (effective_handshake(stacks["eager-only"], s), effective_offload(stacks["eager-only"], s)) == (
        "eager", False)
    s = _tun_settings({"stack": "recording"})
    assert (effective_handshake(stacks["recording"], s), effective_offload(stacks["recording"], s)) == (
        "lazy", True)


def test_stack_settings_use_the_stack_schema() -> None:
    assert _tun_settings({"stack": "recording", "stackSettings": {"keep": 5}}).stack == "recording"
    err = _error({"stack": "recording", "stackSettings": {"keep": 0}})
    assert err.path == "inbounds[0].settings.stackSettings.keep"


def test_constructor_checks_the_runtime_registry_too() -> None:
    # The undecorated class (no registry bound at parse time) still refuses an unknown
    # stack when the runtime builds it.
    pm = PluginManager(extra=[tun_helpers])
    raw = tun_helpers.tun_config({"stack": "recording"})
    config = build_config(raw, pm.registry)
    config.inbounds[0].settings.__dict__["stack"] = "missing"
    with pytest.raises(ConfigError, match="installed stacks"):
        Runtime(config, pm)


def test_cli_test_mode_reports_a_bad_stack(tmp_path: Path) -> None:
    cfg = tmp_path / "tun.json"
    cfg.write_text(json.dumps(tun_helpers.tun_config({"stack": "nosuch"})))
    res = subprocess.run(
        [sys.executable, "-m", "tunray", "run", "-test", "-c", str(cfg)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == EXIT_CONFIG, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "inbounds[0].settings.stack" in lines[0] and "python" in lines[0], res.stderr


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("tun*.json")))
def test_shipped_configs_validate(name: str, tmp_path: Path) -> None:
    from tunray.testing.geo import write_test_geodata

    env = {**os.environ, "TUNRAY_LOCATION_ASSET": str(write_test_geodata(tmp_path))}  # geosite:/geoip: codes
    res = subprocess.run(
        [sys.executable, "-m", "tunray", "run", "-test", "-c", str(REPO / "configs" / name)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert res.returncode == 0, res.stderr
