"""Registration, settings, and the one-line error on a machine without liblwip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tunray.plugin.registry import Registry
from tunray.stack import StackOptions
from tunray_stack_lwip import plugin
from tunray_stack_lwip.stack import LwipStack


def _config(tmp_path: Path, **tun: object) -> Path:
    path = tmp_path / "c.json"
    settings = {"name": "trtest0", "gateway": ["172.19.9.1/30"], "stack": "lwip", **tun}
    path.write_text(json.dumps({"inbounds": [{"protocol": "tun", "settings": settings}],
                                "outbounds": [{"protocol": "freedom"}]}))
    return path


def _tunray(*args: str, block_lwip: bool = False) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh interpreter; *block_lwip* makes the compiled glue unimportable, as on a
    machine where liblwip0/liblwip-dev were never installed."""
    prelude = "import sys; sys.modules['tunray_stack_lwip._lwip'] = None; " if block_lwip else ""
    code = prelude + "import sys; from tunray.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)


def test_registers_lwip_stack() -> None:
    registry = Registry()
    plugin.tunray_register_types(registry)
    assert registry.stacks["lwip"] is LwipStack
    assert LwipStack.capabilities.lazy_handshake and LwipStack.capabilities.vnet_hdr


def test_settings_reach_the_core_config() -> None:
    settings = LwipStack.settings_schema.parse({"sendHighWater": 65536, "timeWait": 5, "gso": False,
                                                "mssRewrite": False}, "stack")
    stack = LwipStack(StackOptions(mtu=9000, handshake="eager", settings=settings))
    config = stack.core_config(vnet_hdr=True)
    assert (config.mtu, config.eager, config.send_high_water, config.time_wait, config.gso, config.mss_rewrite) == (
        9000, True, 65536, 5.0, False, False)


def test_config_test_accepts_lwip(tmp_path: Path) -> None:
    out = _tunray("run", "-test", "-c", str(_config(tmp_path)))
    assert out.returncode == 0, out.stderr
    assert "Configuration OK." in out.stdout


def test_config_test_without_liblwip_names_the_package(tmp_path: Path) -> None:
    out = _tunray("run", "-test", "-c", str(_config(tmp_path)), block_lwip=True)
    assert out.returncode == 23, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("config error: inbounds[0].settings.stack: the lwip stack needs the Debian packages "
                               "liblwip0 and liblwip-dev"), lines[0]


def test_plugin_builds_without_the_lwip_headers(tmp_path: Path) -> None:
    """No liblwip-dev: the wheel still builds (pure Python, no extension), so installing every
    plugin never fails; the stack then reports the package as in the test above."""
    import os
    import zipfile

    plugin_dir = Path(__file__).resolve().parents[1]
    env = dict(os.environ, TUNRAY_LWIP_INCLUDE=str(tmp_path / "no-such-include"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(plugin_dir), "-w",
                          str(tmp_path)], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("tunray_stack_lwip-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "tunray_stack_lwip/core.py" in names
    assert not [n for n in names if "_lwip" in n and n.endswith(".so")], names
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name  # no compiled part
