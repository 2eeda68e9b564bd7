"""Kernel interop through a real TUN: the published stack suite against ``PythonStack``.

The checks live in :mod:`tunray.testing.stackcheck` and run unchanged against every
stack; only what is specific to this stack (its core's offload configuration, its
counters) is asserted here.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
from tunray.stackcore import StackCapabilities
from tunray.testing import stackcheck
from tunray_stack_python.core import CoreConfig
from tunray_stack_python.stack import PythonStack

pytestmark = pytest.mark.root

SIZE = int(os.environ.get("TUNRAY_STACK_BULK_BYTES", 16 << 20))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("offload", [False, True], ids=["plain", "offload"])
@pytest.mark.parametrize("mtu", [1500, 65535])
@pytest.mark.parametrize("family", [4, 6], ids=["v4", "v6"])
async def test_bulk_transfer_sha256(family: int, mtu: int, offload: bool) -> None:
    await stackcheck.check_bulk(PythonStack, family=family, mtu=mtu, offload=offload, size=SIZE)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(stackcheck.CHECKS))
async def test_conformance(name: str) -> None:
    await stackcheck.CHECKS[name](PythonStack)


@pytest.mark.timeout(120)
async def test_impaired_link_with_offload() -> None:
    """Loss and reordering of 64 KiB TSO super-packets (IPv6) are recovered too."""
    await stackcheck.check_impaired(PythonStack, family=6, offload=True, mtu=65535)


async def test_offload_reaches_the_core_and_is_used() -> None:
    async with stackcheck.stack_harness(PythonStack, mtu=65535, offload=True) as h:
        assert isinstance(h.stack, PythonStack)
        config = h.stack.core.config
        assert config.vnet_hdr and config.gso, "the TUN's vnet header and GSO did not reach the core"
        result = await h.client("halfclose", stackcheck.V4_PEER, stackcheck.HALF)
        assert result["reply"] == "first half" + stackcheck.TRAILER.decode()
        assert h.stack.counters.get("vnet_truncated", 0) == 0


async def test_malformed_drops_are_counted_by_reason() -> None:
    """The generic check sees the counters rise; here, each reason this stack names shows up."""
    async with stackcheck.stack_harness(PythonStack) as h:
        await stackcheck.inject_malformed(h)
        counters = h.stack.counters
    for reason in ("ip_truncated", "ipv4_bad_header", "ipv4_bad_checksum", "ipv4_bad_length", "ip_bad_version",
                   "ipv6_bad_length", "tcp_truncated", "tcp_bad_offset", "tcp_bad_checksum", "udp_truncated",
                   "udp_bad_length", "udp_bad_checksum"):
        assert counters.get(reason, 0) >= 1, f"no {reason} drop counted: {counters}"
    assert counters.get("tcp_bad_checksum", 0) >= 4  # a live-flow segment and a SYN, v4 and v6


class EagerOnlyStack(PythonStack):
    """The python stack declaring that it cannot hold a SYN (and always answering at once)."""

    name = "python-eager-only"
    capabilities = StackCapabilities(lazy_handshake=False, icmp_echo=True, vnet_hdr=True, tso=True)

    def core_config(self, vnet_hdr: bool) -> CoreConfig:
        return dataclasses.replace(super().core_config(vnet_hdr), eager=True)


@pytest.mark.timeout(180)
async def test_check_stack_follows_the_capabilities() -> None:
    """Without lazy support the suite runs eager and leaves the lazy check out; asking for lazy is refused."""
    ran = await stackcheck.check_stack(EagerOnlyStack, bulk_bytes=1 << 20, flows=20)
    assert "lazy_handshake" not in ran and {"bulk v4", "eager_handshake", "udp_full_cone", "icmp_echo"} <= set(ran)
    with pytest.raises(stackcheck.CapabilityError, match="cannot hold a SYN"):
        await stackcheck.check_stack(EagerOnlyStack, handshake="lazy")
    with pytest.raises(stackcheck.CapabilityError, match="cannot hold a SYN"):
        await stackcheck.check_lazy_handshake(EagerOnlyStack)
    assert not stackcheck.namespaces_left()
