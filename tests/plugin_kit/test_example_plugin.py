"""The example out-of-tree plugin, installed from a wheel into a fresh venv, seen through the CLI."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from kit_helpers import EXAMPLE, KitVenv

pytestmark = pytest.mark.timeout(300)

SOCKS_CONFIG = {
    "log": {"loglevel": "none", "access": "none"},
    "outbounds": [{"protocol": "socks", "tag": "proxy", "settings": {"address": "127.0.0.1", "port": 1080}}],
}


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "socks.json"
    path.write_text(json.dumps(SOCKS_CONFIG))
    return path


def test_version_lists_the_plugin_with_its_distribution(kit_venv: KitVenv) -> None:
    out = kit_venv.run(kit_venv.tunray, "version")
    assert out.returncode == 0, out.stderr
    lines = [line.split() for line in out.stdout.splitlines()]
    assert ["outbound_socks", "tunray-outbound-socks", "0.1.0"] in lines, out.stdout
    plugins = kit_venv.run(kit_venv.tunray, "plugins").stdout
    assert any(line.split()[:2] == ["outbound", "socks"] and "tunray-outbound-socks 0.1.0" in line
               for line in plugins.splitlines()), plugins


def test_a_config_using_it_validates(kit_venv: KitVenv, tmp_path: Path) -> None:
    out = kit_venv.run(kit_venv.tunray, "run", "-test", "-c", _config(tmp_path))
    assert out.returncode == 0 and "Configuration OK." in out.stdout, out.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"outbounds": [{"protocol": "socks", "settings": {"address": "h"}}]}))
    out = kit_venv.run(kit_venv.tunray, "run", "-test", "-c", bad)
    assert out.returncode == 23
    assert out.stderr.strip() == "config error: outbounds[0].settings.port: is required with address"


@pytest.mark.parametrize(
    "env",
    [
        {"TUNRAY_BLOCK_PLUGINS": "outbound_socks"},
        {"TUNRAY_BLOCK_PLUGINS": "something-else, tunray-outbound-socks"},
        {"TUNRAY_DISABLE_PLUGIN_AUTOLOAD": "1"},
    ],
)
def test_blocking_or_no_autoload_makes_it_disappear(kit_venv: KitVenv, tmp_path: Path, env: dict[str, str]) -> None:
    out = kit_venv.run(kit_venv.tunray, "version", env=env)
    assert out.returncode == 0 and "outbound_socks" not in out.stdout and "tunray-outbound-socks" not in out.stdout
    out = kit_venv.run(kit_venv.tunray, "run", "-test", "-c", _config(tmp_path), env=env)
    assert out.returncode == 23, out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith("config error: outbounds[0].protocol: unknown protocol 'socks'"), lines[0]


DRIVE = textwrap.dedent(
    """
    import asyncio, subprocess, sys
    sys.path.insert(0, sys.argv[1])
    from socks_server import SocksServer
    from tunray.testing.conformance import check_outbound

    async def main() -> None:
        async with SocksServer(users={"kit": "pw"}) as server:
            outbound = {"protocol": "socks", "settings": {"servers": [
                {"address": "127.0.0.1", "port": server.port, "users": [{"user": "kit", "pass": "pw"}]}]}}
            await check_outbound(outbound, "127.0.0.1", port=int(sys.argv[2]))
            assert ("127.0.0.1", int(sys.argv[2])) in server.connects and server.udp_packets >= 2
        print("traffic OK", len(server.connects), server.udp_packets)

    asyncio.run(main())
    """
)


def test_it_carries_real_traffic(kit_venv: KitVenv, tmp_path: Path) -> None:
    import random
    import subprocess

    port = random.randrange(10000, 32000, 4)
    echo = subprocess.Popen([str(kit_venv.python), "-m", "tunray.testing.echo", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert echo.stdout is not None and b"ready" in echo.stdout.readline()
        script = tmp_path / "drive.py"
        script.write_text(DRIVE)
        out = kit_venv.run(kit_venv.python, script, EXAMPLE / "tests", str(port))
        assert out.returncode == 0 and "traffic OK" in out.stdout, out.stdout + out.stderr
    finally:
        echo.terminate()
        echo.wait(5)
        for pipe in (echo.stdout, echo.stderr):
            if pipe is not None:
                pipe.close()


def test_the_example_suite_passes_against_the_installed_wheel(kit_venv: KitVenv) -> None:
    out = kit_venv.run(kit_venv.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=EXAMPLE)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "failed" not in out.stdout
