"""Every installed stack passes the published stack suite, at the issue's sizes.

The stacks come from the plugin registry, so a new stack plugin (lwIP, ``system``) is
tested here as soon as it is installed, with no change to this file.  The issue's big
numbers are the defaults; CI on a slower box may lower them through the environment:

* ``TUNRAY_E2E_BULK_BYTES``: bytes each way at MTU 65535 with offloads (200 MiB);
* ``TUNRAY_E2E_BULK_BYTES_1500``: bytes each way at MTU 1500 without offloads (32 MiB);
* ``TUNRAY_E2E_FLOWS``: concurrent TCP flows (1,000).
"""

from __future__ import annotations

import os

import pytest
from tunray.plugin.manager import PluginManager
from tunray.testing.conformance import check_stack

STACKS = sorted(PluginManager().registry.stacks)
BIG = int(os.environ.get("TUNRAY_E2E_BULK_BYTES", 200 << 20))
SMALL = int(os.environ.get("TUNRAY_E2E_BULK_BYTES_1500", 32 << 20))
FLOWS = int(os.environ.get("TUNRAY_E2E_FLOWS", 1000))


def test_the_python_stack_is_installed() -> None:
    assert "python" in STACKS, f"stacks registered: {STACKS}"


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("mtu", "offload", "size"), [(65535, True, BIG), (1500, False, SMALL)], ids=["mtu65535-offload", "mtu1500"]
)
@pytest.mark.parametrize("name", STACKS)
async def test_stack_passes_the_suite(name: str, mtu: int, offload: bool, size: int) -> None:
    stack_cls = PluginManager().registry.stacks[name]
    offload = offload and stack_cls.capabilities.vnet_hdr  # what the stack declares; check_stack refuses more
    ran = await check_stack(stack_cls, mtu=mtu, offload=offload, bulk_bytes=size, flows=FLOWS)
    assert ran, f"no check applies to stack {name!r}"
