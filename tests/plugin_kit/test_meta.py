"""Meta-tests: the hook reference documents every hook; every first-party plugin tests itself."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tunray.plugin import spec

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "plugins.md"
PLUGINS = sorted(p for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").exists())


def _signature(name: str) -> str:
    """The hook's ``def`` line(s) as written in spec.py, joined into one line."""
    source = inspect.getsource(getattr(spec, name))
    start = source.index("def ")
    end = source.index(":\n", start)
    return re.sub(r"\s+", " ", source[start : end + 1]).replace("( ", "(").replace(", )", ")")


def _sections(text: str) -> dict[str, str]:
    """Markdown sections keyed by their heading text."""
    parts = re.split(r"^#{2,4} +(.+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


@pytest.mark.parametrize("hook", spec.all_hook_names())
def test_every_hook_has_a_section_with_its_exact_signature(hook: str) -> None:
    sections = _sections(DOC.read_text())
    matching = [body for heading, body in sections.items() if f"`{hook}`" in heading]
    assert matching, f"docs/plugins.md has no section headed `{hook}`"
    assert _signature(hook) in matching[0], f"the {hook} section lacks: {_signature(hook)}"


@pytest.mark.parametrize("plugin", PLUGINS, ids=[p.name for p in PLUGINS])
def test_first_party_plugin_has_a_suite_that_runs_on_its_own(plugin: Path) -> None:
    tests = plugin / "tests"
    assert tests.is_dir(), f"{plugin.name} has no tests/ directory"
    assert list(tests.glob("test_*.py")), f"{plugin.name}/tests holds no test_*.py"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", str(tests)],
        capture_output=True, text=True, timeout=120, cwd=plugin,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert re.search(r"^\d+ tests? collected", proc.stdout, flags=re.M), proc.stdout[-500:]
