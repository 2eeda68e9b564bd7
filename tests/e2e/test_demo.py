"""`python -m tunray.demo` (what `sudo ./scripts/demo` runs after installing) end to end."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tunray.demo import plan_from_config
from tunray.testing.netns import namespaces_clean

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tun-demo-freedom.json"


def test_demo_plan_follows_the_committed_config() -> None:
    plan = plan_from_config(CONFIG)
    assert plan.tun == "tunray0" and plan.stack == "python"
    assert str(plan.host4) == "203.0.113.10" and str(plan.host6) == "2001:db8:10::10"


@pytest.mark.root
@pytest.mark.timeout(180)
@pytest.mark.parametrize("stack", [None, "lwip"], ids=["config-stack", "lwip"])
def test_demo_runs_and_reports_access_log_and_throughput(stack: str | None) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "tunray.demo", "--size-mib", "16", *(["--stack", stack] if stack else [])],
        capture_output=True,
        text=True,
        timeout=170,
        cwd=ROOT,
    )
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    assert "demo OK" in out
    assert f"stack {stack or 'python'})" in out
    assert "matches the served file" in out
    # tunray's own access log lines, one per flow the app opened through the TUN
    for flow in ("tcp:203.0.113.10:8080", "tcp:203.0.113.10:7000", "udp:203.0.113.10:7000",
                 "tcp:[2001:db8:10::10]:7000", "udp:[2001:db8:10::10]:7000"):
        assert re.search(rf"from \S+ accepted {re.escape(flow)} \[tun-in", out), (flow, out)
    m = re.search(r"http GET +16\.0 MiB in [\d.]+ s = ([\d.]+) MiB/s", out)
    assert m is not None and float(m.group(1)) > 0, out
    assert namespaces_clean(prefix="demo"), "the demo left a namespace behind"


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux) to drop privileges")
def test_demo_refuses_without_root_privileges_message() -> None:
    res = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "tunray.demo"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert res.returncode == 2 and "needs root" in res.stderr
