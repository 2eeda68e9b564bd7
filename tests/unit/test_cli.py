"""The command line, run as a user would run it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TUNRAY = [sys.executable, "-m", "tunray"]
ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TUNRAY, *args], capture_output=True, text=True, timeout=60, **kw)  # type: ignore[call-overload]


def test_uuid_mapping_matches_xray() -> None:
    out = run("uuid", "-i", "example")
    assert out.returncode == 0 and out.stdout.strip() == "feb54431-301b-52bb-a6dd-e1e93e81bb9e"
    fresh = run("uuid").stdout.strip()
    assert len(fresh) == 36 and fresh[14] == "4"


def test_version_lists_plugins_with_distribution_and_version() -> None:
    out = run("version")
    assert out.returncode == 0
    assert out.stdout.startswith("tunray 0.1.0")
    assert "outbound_freedom" in out.stdout and "tunray-outbound-freedom 0.1.0" in out.stdout


def test_plugins_lists_protocols_with_owner() -> None:
    out = run("plugins").stdout
    assert any(line.split()[:2] == ["outbound", "freedom"] and "tunray-outbound-freedom" in line for line in out.splitlines())
    assert any(line.split()[:2] == ["outbound", "blackhole"] for line in out.splitlines())


def test_every_example_config_validates(tmp_path: Path) -> None:
    from tunray.testing.geo import write_test_geodata

    # geosite:/geoip: codes the examples name, as small files (the real ones are downloads)
    env = {**os.environ, "TUNRAY_LOCATION_ASSET": str(write_test_geodata(tmp_path))}
    configs = sorted((ROOT / "configs").glob("*.json")) + sorted((ROOT / "configs").glob("*.yaml"))
    assert configs, "configs/ must hold examples"
    for path in configs:
        out = run("run", "-test", "-c", str(path), env=env)
        assert out.returncode == 0, f"{path.name}: {out.stderr}"
        assert "Configuration OK." in out.stdout


def test_bad_config_exit_code_and_single_line(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"outbounds": [{"protocol": "freedom", "settings": {"domainStrategy": 3}}]}))
    out = run("run", "-test", "-c", str(path))
    assert out.returncode == 23
    assert out.stderr.strip() == (
        "config error: outbounds[0].settings.domainStrategy: expected one of 'AsIs', 'UseIP', 'UseIPv4', "
        "'UseIPv6', 'UseIPv4v6', 'UseIPv6v4', 'ForceIP', 'ForceIPv4', 'ForceIPv6', 'ForceIPv4v6', "
        "'ForceIPv6v4', got the number 3"
    )


def test_multiple_files_and_confdir(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('{"outbounds": [{"protocol": "freedom", "tag": "x"}]}')
    d = tmp_path / "d"
    d.mkdir()
    (d / "01.yaml").write_text("outbounds:\n  - protocol: blackhole\n    tag: x\n")
    out = run("run", "-dump", "-c", str(tmp_path / "a.json"), "-confdir", str(d))
    assert json.loads(out.stdout)["outbounds"] == [{"protocol": "blackhole", "tag": "x"}]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_shut_down_gracefully_within_5_seconds(tmp_path: Path, sig: int) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"log": {"loglevel": "warning"}, "outbounds": [{"protocol": "freedom"}]}))
    with subprocess.Popen([*TUNRAY, "run", "-c", str(path)], stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            assert "started" in line, line
            t0 = time.monotonic()
            os.kill(proc.pid, sig)
            assert proc.wait(5) == 0
            assert time.monotonic() - t0 < 5
        finally:
            if proc.poll() is None:
                proc.kill()
