"""Shared pieces of the plugin-kit tests (a module with a unique name: test modules import
it directly, which ``from conftest import ...`` cannot do reliably in a multi-conftest tree)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "tunray-outbound-socks"


@dataclass(frozen=True)
class KitVenv:
    root: Path
    python: Path
    tunray: Path
    wheel: Path

    def run(self, *argv: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNRAY_", "PYTHON", "VIRTUAL_ENV"))}
        full_env.update(env or {})
        return subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=full_env, cwd=cwd,
                              timeout=timeout)
