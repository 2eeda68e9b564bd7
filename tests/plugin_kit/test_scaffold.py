"""``tunray new-plugin``: every kind generates a distribution whose own suite passes as generated."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from kit_helpers import KitVenv
from tunray.plugin.registry import PluginError
from tunray.scaffold import KINDS, render, write_plugin

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def generated(kit_venv: KitVenv) -> dict[str, Path]:
    """One plugin of each kind, written by the CLI and installed (non-editable) into a --target dir."""
    out = kit_venv.root / "generated"
    out.mkdir()
    dirs: dict[str, Path] = {}
    for kind in KINDS:
        proc = subprocess.run([sys.executable, "-m", "tunray", "new-plugin", kind, f"kit-{kind}", "-o", str(out)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        dirs[kind] = out / f"tunray-{kind}-kit-{kind}"
        assert str(dirs[kind]) in proc.stdout
    site = kit_venv.root / "generated-site"
    proc = kit_venv.run(kit_venv.python, "-m", "pip", "-q", "install", "--no-deps", "--target", site, *dirs.values(),
                        timeout=300)
    assert proc.returncode == 0, proc.stderr
    dirs["site"] = site
    return dirs


@pytest.mark.parametrize("kind", list(KINDS))
def test_generated_suite_passes(kit_venv: KitVenv, generated: dict[str, Path], kind: str) -> None:
    project = generated[kind]
    assert (project / "pyproject.toml").read_text().count("[project.entry-points.tunray]") == 1
    proc = kit_venv.run(kit_venv.python, "-m", "pytest", "-q", cwd=project, env={"PYTHONPATH": str(generated["site"])})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout


def test_generated_plugins_show_in_version(kit_venv: KitVenv, generated: dict[str, Path]) -> None:
    proc = kit_venv.run(kit_venv.tunray, "version", env={"PYTHONPATH": str(generated["site"])})
    assert proc.returncode == 0, proc.stderr
    lines = [line.split() for line in proc.stdout.splitlines()]
    for kind in KINDS:
        assert [f"{kind}_kit_{kind}", f"tunray-{kind}-kit-{kind}", "0.1.0"] in lines, proc.stdout


def test_bad_names_and_existing_directories_are_one_line_errors(tmp_path: Path) -> None:
    for name in ("Bad Name", "1abc", "a--b", ""):
        with pytest.raises(PluginError, match="bad plugin name"):
            render("outbound", name)
    write_plugin("outbound", "twice", tmp_path)
    with pytest.raises(PluginError, match="already exists"):
        write_plugin("outbound", "twice", tmp_path)
    proc = subprocess.run([sys.executable, "-m", "tunray", "new-plugin", "stack", "Bad!", "-o", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 24 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_generated_code_is_lint_clean(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    for kind in KINDS:
        write_plugin(kind, f"lint-{kind}", tmp_path)
        project = tmp_path / f"tunray-{kind}-lint-{kind}"
        ruff = subprocess.run([str(bin_dir / "ruff"), "check", "--no-cache", "."], cwd=project, capture_output=True,
                              text=True, timeout=60)
        assert ruff.returncode == 0, ruff.stdout
