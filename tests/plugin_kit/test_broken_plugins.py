"""A broken plugin stops ``tunray version`` with one line naming its distribution, no traceback."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from kit_helpers import KitVenv

pytestmark = pytest.mark.timeout(300)

EXIT_PLUGIN = 24

GOOD = """
from tunray import hookimpl
from tunray.outbounds.blackhole import BlackholeOutbound

class Nowhere(BlackholeOutbound):
    protocol = "nowhere"

@hookimpl
def tunray_register_types(registry):
    registry.add_outbound(Nowhere)
"""


def make_dist(site: Path, dist: str, module: str, source: str) -> None:
    """An installed distribution as importlib.metadata sees it: a module and a dist-info with entry points."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[tunray]\n{module} = {module}\n")


CASES = {
    "import-error": (
        [("kit-broken", "kit_broken", "raise RuntimeError('boom at import')\n")],
        ["'kit_broken' from distribution kit-broken 1.2.3 failed to import", "RuntimeError: boom at import"],
    ),
    "duplicate-protocol": (
        [("kit-one", "kit_one", GOOD), ("kit-two", "kit_two", GOOD)],
        ["'nowhere' is registered twice", "kit-one 1.2.3", "kit-two 1.2.3"],
    ),
    "misspelt-hook": (
        [("kit-typo", "kit_typo", "from tunray import hookimpl\n@hookimpl\ndef tunray_register_typez(registry):\n    pass\n")],
        ["kit-typo", "tunray_register_typez"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_plugin_is_one_clear_line(kit_venv: KitVenv, tmp_path: Path, case: str) -> None:
    dists, expected = CASES[case]
    for dist, module, source in dists:
        make_dist(tmp_path, dist, module, source)
    out = kit_venv.run(kit_venv.tunray, "version", env={"PYTHONPATH": str(tmp_path)})
    assert out.returncode == EXIT_PLUGIN, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith("plugin error: "), lines[0]
    for fragment in expected:
        assert fragment in lines[0], lines[0]
    # Blocking the broken distribution lets tunray start again.
    blocked = ",".join(dist for dist, _, _ in dists)
    out = kit_venv.run(kit_venv.tunray, "version", env={"PYTHONPATH": str(tmp_path), "TUNRAY_BLOCK_PLUGINS": blocked})
    assert out.returncode == 0 and "outbound_socks" in out.stdout, out.stderr
