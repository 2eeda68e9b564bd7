"""Kernel interop through a real TUN: the published stack suite against ``LwipStack``.

The checks live in :mod:`tunray.testing.stackcheck` and run unchanged against every
stack (the Python stack's suite calls the same ones); only what is specific to lwIP
(its glue's counters: GSO merges, MSS rewrites) is asserted here.
"""

from __future__ import annotations

import os

import pytest
from tunray.testing import stackcheck
from tunray_stack_lwip.stack import LwipStack

pytestmark = pytest.mark.root

SIZE = int(os.environ.get("TUNRAY_STACK_BULK_BYTES", 16 << 20))
BIG = int(os.environ.get("TUNRAY_LWIP_BIG_BYTES", 200 << 20))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("offload", [False, True], ids=["plain", "offload"])
@pytest.mark.parametrize("mtu", [1500, 65535])
@pytest.mark.parametrize("family", [4, 6], ids=["v4", "v6"])
async def test_bulk_transfer_sha256(family: int, mtu: int, offload: bool) -> None:
    await stackcheck.check_bulk(LwipStack, family=family, mtu=mtu, offload=offload, size=SIZE)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("family", [4, 6], ids=["v4", "v6"])
async def test_200_mib_each_way_sha256(family: int) -> None:
    await stackcheck.check_bulk(LwipStack, family=family, mtu=1500, offload=True, size=BIG)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(stackcheck.CHECKS))
async def test_conformance(name: str) -> None:
    await stackcheck.CHECKS[name](LwipStack)


@pytest.mark.timeout(180)
async def test_thousand_concurrent_flows() -> None:
    await stackcheck.check_many_flows(LwipStack, flows=1000)


@pytest.mark.timeout(120)
async def test_impaired_link_with_offload() -> None:
    """Loss, duplication and reordering of 64 KiB TSO super-packets (IPv6) are recovered too."""
    await stackcheck.check_impaired(LwipStack, family=6, offload=True, mtu=65535)


async def test_offload_gso_and_mss_rewrite_are_used() -> None:
    async with stackcheck.stack_harness(LwipStack, mtu=65535, offload=True) as h:
        assert isinstance(h.stack, LwipStack) and h.stack.core is not None
        before = h.stack.stats()
        await stackcheck._bulk(h, stackcheck.V4_PEER, 4 << 20)
        after = h.stack.stats()
    assert after["mss_rewritten"] > before["mss_rewritten"], "the SYN-ACK's MSS was not raised to the MTU"
    assert after["gso_merged"] > before["gso_merged"], "no lwIP segments were merged into GSO super-packets"


async def test_malformed_drops_are_counted_by_reason() -> None:
    async with stackcheck.stack_harness(LwipStack) as h:
        await stackcheck.inject_malformed(h)
        counters = h.stack.counters
    for reason in ("ip_truncated", "ipv4_bad_header", "ipv4_bad_checksum", "ipv4_bad_length", "ip_bad_version",
                   "ipv6_bad_length", "tcp_truncated", "tcp_bad_offset", "tcp_bad_checksum", "udp_truncated",
                   "udp_bad_length", "udp_bad_checksum"):
        assert counters.get(reason, 0) >= 1, f"no {reason} drop counted: {counters}"
    assert counters.get("tcp_bad_checksum", 0) >= 4  # a live-flow segment and a SYN, v4 and v6
