"""Kernel interop through a real TUN: the Linux TCP/UDP stack is the app, PythonStack terminates it."""

from __future__ import annotations

import asyncio
import os

import pytest
from stackpy_tun import (
    ECHO,
    HALF,
    REFUSE,
    SINK,
    SOURCE,
    TRAILER,
    UDP_ECHO,
    V4_PEER,
    V6_PEER,
    ImpairedDevice,
    run_client,
    serve,
    tun_namespace,
)
from tunray.device import PacketDevice
from tunray.stack import StackOptions
from tunray_stack_python.stack import PythonStack

pytestmark = pytest.mark.root

SIZE = int(os.environ.get("TUNRAY_STACK_BULK_BYTES", 20 << 20))


class Running:
    def __init__(self, stack: PythonStack, ns: str, server: asyncio.Task[None]) -> None:
        self.stack, self.ns, self.server = stack, ns, server


async def _start(device: PacketDevice, ns: str, mtu: int, **kw: object) -> Running:
    stack = PythonStack(StackOptions(mtu=mtu, **kw))  # type: ignore[arg-type]
    await stack.attach(device)
    return Running(stack, ns, asyncio.create_task(serve(stack)))


async def _stop(running: Running) -> None:
    await running.stack.aclose()
    await asyncio.wait_for(running.server, 10)


class stack_in_namespace:
    def __init__(self, mtu: int = 1500, offload: bool = False, wrap: object = None, **kw: object) -> None:
        self.mtu, self.offload, self.wrap, self.kw = mtu, offload, wrap, kw

    async def __aenter__(self) -> Running:
        self._cm = tun_namespace(self.mtu, self.offload)
        device, ns = self._cm.__enter__()
        if self.wrap is not None:
            device = self.wrap(device)  # type: ignore[operator]
        try:
            self.running = await _start(device, ns, self.mtu, **self.kw)
        except BaseException:
            self._cm.__exit__(None, None, None)
            raise
        return self.running

    async def __aexit__(self, *exc: object) -> None:
        try:
            await _stop(self.running)
        finally:
            self._cm.__exit__(None, None, None)


async def _bulk(running: Running, host: str, size: int) -> None:
    up = await run_client(running.ns, "upload", host, str(SINK), str(size))
    assert up["sent"] == up["reply"], "upload corrupted"
    down = await run_client(running.ns, "download", host, str(SOURCE), str(size))
    assert down["bytes"] == size
    assert down["received"] == down["server"], "download corrupted"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("offload", [False, True], ids=["plain", "offload"])
@pytest.mark.parametrize("mtu", [1500, 65535])
@pytest.mark.parametrize("host", [V4_PEER, V6_PEER], ids=["v4", "v6"])
async def test_bulk_transfer_sha256(host: str, mtu: int, offload: bool) -> None:
    async with stack_in_namespace(mtu, offload) as running:
        await _bulk(running, host, SIZE)
        if offload:
            assert running.stack.core.config.vnet_hdr


@pytest.mark.timeout(120)
async def test_many_concurrent_flows() -> None:
    async with stack_in_namespace(1500, tcp_buffer=256 << 10) as running:
        result = await run_client(running.ns, "many", V4_PEER, str(ECHO), "250")
        assert result == {"ok": 250, "n": 250}


async def test_udp_full_cone_two_destinations() -> None:
    async with stack_in_namespace(1500) as running:
        r4 = await run_client(running.ns, "udp", "10.77.0.2,10.77.0.3", str(UDP_ECHO))
        assert r4["replies"] == {
            "10.77.0.2": "to 10.77.0.2 from 10.77.0.2",
            "10.77.0.3": "to 10.77.0.3 from 10.77.0.3",
        }
        r6 = await run_client(running.ns, "udp", "fd77::2,fd77::3", str(UDP_ECHO))
        assert r6["replies"] == {"fd77::2": "to fd77::2 from fd77::2", "fd77::3": "to fd77::3 from fd77::3"}
        assert running.stack.counters.get("udp_flows") == 2  # one per client socket, not per destination


async def test_half_closed_flow_still_receives() -> None:
    async with stack_in_namespace(1500) as running:
        result = await run_client(running.ns, "halfclose", V4_PEER, str(HALF))
        assert result["reply"] == "first half" + TRAILER.decode()


async def test_lazy_handshake_refusal() -> None:
    async with stack_in_namespace(1500, handshake="lazy") as running:
        result = await run_client(running.ns, "refused", V4_PEER, str(REFUSE))
        assert result["refused"] is True and result["seconds"] < 1.0


async def test_ping_is_answered() -> None:
    async with stack_in_namespace(1500) as running:
        for target in ("10.77.0.9", "fd77::9"):
            result = await run_client(running.ns, "ping", target, "2")
            assert result["replies"] == 2
        assert running.stack.counters["icmp_echo_replied"] >= 4


@pytest.mark.timeout(240)
@pytest.mark.parametrize("offload", [False, True], ids=["plain", "offload"])
@pytest.mark.parametrize("host", [V4_PEER, V6_PEER], ids=["v4", "v6"])
async def test_impaired_link_loses_no_byte(host: str, offload: bool) -> None:
    """2% loss, 1% duplication, 2% reordering in both directions: still every byte, in order."""
    devices: list[ImpairedDevice] = []

    def wrap(device: PacketDevice) -> PacketDevice:
        devices.append(ImpairedDevice(device, seed=7))
        return devices[-1]

    async with stack_in_namespace(1500, offload, wrap=wrap) as running:
        await _bulk(running, host, min(SIZE, 4 << 20))
    stats = devices[0].stats
    least = 2 if offload else 10  # with TSO a packet is up to 64 KiB, so there are far fewer
    assert stats["lost"] >= least and stats["duplicated"] >= least // 2 and stats["reordered"] >= least
