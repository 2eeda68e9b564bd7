"""A fresh, plain virtual environment for the plugin-kit tests, built once per session.

It holds tunray installed non-editable from a copy of this checkout, the example
plugin installed from a wheel, and pytest: what a plugin author's environment looks
like.  Using it (rather than the development venv) also keeps these tests apart from
plugins other work may have half-installed there.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kit_helpers import EXAMPLE, ROOT, KitVenv


def _check(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"{proc.args}: {proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"


def _copy_core(dest: Path) -> Path:
    """The core's sources without build leftovers, so the build never writes into the checkout."""
    src = dest / "tunray-src"
    src.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", src / "pyproject.toml")
    shutil.copytree(ROOT / "core", src / "core", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    return src


@pytest.fixture(scope="session")
def kit_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KitVenv]:
    base = tmp_path_factory.mktemp("plugin-kit")
    venv = base / "venv"
    _check(subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=120))
    python = venv / "bin" / "python"
    wheels = base / "wheels"
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
    kit = KitVenv(base, python, venv / "bin" / "tunray", wheels)
    example = base / "example-src"  # built from a copy: setuptools writes build/ and egg-info in-tree
    shutil.copytree(EXAMPLE, example, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    _check(kit.run(*pip, "wheel", "--no-deps", "-w", wheels, example, cwd=base))
    (wheel,) = wheels.glob("tunray_outbound_socks-*.whl")
    kit = KitVenv(base, python, venv / "bin" / "tunray", wheel)
    _check(kit.run(*pip, "install", _copy_core(base), wheel, "pytest", "pytest-timeout", cwd=base, timeout=300))
    yield kit
    shutil.rmtree(base, ignore_errors=True)
