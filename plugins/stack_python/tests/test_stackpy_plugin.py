"""Registration and settings of the python stack."""

from __future__ import annotations

from tunray.plugin.registry import Registry
from tunray.stack import StackOptions
from tunray_stack_python import plugin
from tunray_stack_python.stack import PythonStack


def test_registers_python_stack() -> None:
    registry = Registry()
    plugin.tunray_register_types(registry)
    assert registry.stacks["python"] is PythonStack


def test_settings_reach_the_core() -> None:
    settings = PythonStack.settings_schema.parse({"sendHighWater": 65536, "timeWait": 5, "gso": False}, "stack")
    stack = PythonStack(StackOptions(mtu=9000, handshake="eager", settings=settings))
    config = stack.core.config
    assert (config.mtu, config.eager, config.send_high_water, config.time_wait) == (9000, True, 65536, 5.0)
    assert stack.counters is stack.core.counters
