"""Registration, settings and capabilities of the python stack."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from tunray.config.errors import ConfigError
from tunray.device import Offloads, device_pair
from tunray.plugin.registry import Registry
from tunray.stack import StackOptions
from tunray.stackdriver import LIMITS, StackDriver
from tunray_stack_python import plugin
from tunray_stack_python.core import Core
from tunray_stack_python.settings import DEFAULTS, PythonStackSettings
from tunray_stack_python.stack import PythonStack


def test_registers_python_stack() -> None:
    registry = Registry()
    plugin.tunray_register_types(registry)
    assert registry.stacks["python"] is PythonStack
    assert issubclass(PythonStack, StackDriver)
    caps = PythonStack.capabilities
    assert caps.lazy_handshake and caps.icmp_echo and caps.vnet_hdr and caps.tso


def test_settings_reach_the_core_typed() -> None:
    settings = PythonStack.settings_schema.parse({"sendHighWater": 65536, "timeWait": 5, "gso": False}, "stack")
    stack = PythonStack(StackOptions(mtu=9000, handshake="eager", settings=settings))
    assert stack.settings == PythonStackSettings(gso=False, send_high_water=65536, time_wait=5)
    config = stack.make_core(True).config
    assert (config.mtu, config.eager, config.send_high_water, config.time_wait) == (9000, True, 65536, 5.0)
    assert config.vnet_hdr and not config.gso, "gso: false must reach the core"
    assert stack.make_core(False).config.gso is False, "no GSO without vnet headers"


def test_defaults_are_declared_once() -> None:
    """Unset settings (and StackOptions' empty settings) give the dataclass defaults, in the core too."""
    stack = PythonStack(StackOptions())
    assert stack.settings == DEFAULTS
    config = stack.make_core(True).config
    assert (config.send_high_water, config.initial_cwnd, config.gso) == (
        DEFAULTS.send_high_water, DEFAULTS.initial_cwnd, True)
    assert [row[0] for row in PythonStack.settings_schema.document()] == [
        "gso", "sendHighWater", "initialCwnd", "timeWait", "finTimeout"]
    with pytest.raises(ConfigError) as info:
        PythonStack.settings_schema.parse({"timeWait": 999}, "inbounds[0].settings.stackSettings")
    assert info.value.path == "inbounds[0].settings.stackSettings.timeWait"


async def test_attach_builds_the_core_for_the_device_and_shares_counters() -> None:
    mine, kernel = device_pair()
    stack = PythonStack(StackOptions())
    try:
        await stack.attach(mine)
        assert isinstance(stack.core, Core) and not stack.core.config.vnet_hdr
        assert stack.counters is stack.core.counters
        kernel.write(b"\x45garbage")
        for _ in range(100):
            if stack.counters:
                break
            await asyncio.sleep(0.01)
        assert {k: v for k, v in stack.stats().items() if v or k not in LIMITS} == {
                                 "ip_truncated": 1, "tcp_open": 0, "tcp_half_open": 0, "udp_open": 0,
                                 "buffered_bytes": 0, "buffered_bytes_peak": 0,
                                 "buffered_bytes_limit": 64 << 20}
        with pytest.raises(RuntimeError, match="twice"):
            await stack.attach(mine)
    finally:
        await stack.aclose()
        assert mine.fileno() >= 0, "the stack must not close the device"
        mine.close()
        kernel.close()


async def test_a_stack_without_vnet_refuses_a_vnet_device() -> None:
    class Plain(PythonStack):
        capabilities = dataclasses.replace(PythonStack.capabilities, vnet_hdr=False)

    mine, kernel = device_pair()
    mine.offloads = Offloads(vnet_hdr=True)
    stack = Plain(StackOptions())
    try:
        with pytest.raises(ValueError, match="virtio-net"):
            await stack.attach(mine)
    finally:
        await stack.aclose()
        mine.close()
        kernel.close()
