"""netconf loads pyroute2's IPRoute without the whole package; the rest of pyroute2 still imports."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
from tunray_tun import netconf
lean = sorted(m for m in ("pyroute2.ndb.main", "pyroute2.ipdb", "sqlite3", "pyroute2.plan9") if m in sys.modules)
with netconf.sync_ipr() as ipr:
    lo = netconf.link_index(ipr, "lo")
from pyroute2 import NDB, IPRoute
import pyroute2
print(lean, lo, IPRoute is netconf.IPRoute, NDB.__name__, pyroute2.IPRoute is IPRoute)
"""


def test_iproute_without_the_package_init_then_the_full_package_on_demand() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["[]", "1", "True", "NDB", "True"]
