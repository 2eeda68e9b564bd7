"""Shutdown drains flows: ``Runtime.stop`` stops accepting, lets running flows finish
within the drain timeout, cancels (resets) the rest, then closes outbounds.

The dispatcher owns every flow task; an inbound only starts flows.  These tests run a
whole runtime with the driver inbound and ``freedom`` to a real echo server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from tunray.testing.harness import driver_of, running


@pytest.fixture
def echo_port(echo_server: int) -> Iterator[int]:
    yield echo_server


def _config() -> dict[str, Any]:
    return {
        "log": {"loglevel": "none", "access": "none"},
        "inbounds": [{"protocol": "driver", "tag": "drv"}],
        "outbounds": [{"protocol": "freedom", "tag": "direct"}],
    }


async def test_running_flow_finishes_during_the_drain(echo_port: int) -> None:
    async with running(_config()) as rt:
        drv = driver_of(rt)
        app, task = drv.open_tcp("10.9.0.2:4000", f"127.0.0.1:{echo_port}")
        await app.send(b"before")
        assert await app.recv_exactly(6) == b"before"
        stopping = asyncio.create_task(rt.stop(drain_timeout=10.0))
        for _ in range(20):  # give stop every chance to cut the flow (it must not)
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        assert not stopping.done()
        # the flow still carries data both ways while the runtime drains
        await app.send(b"during")
        assert await app.recv_exactly(6) == b"during"
        app.shutdown_write()
        assert await app.recv_all() == b""
        await task
        assert app.closed and not app.reset  # a clean end, not a cut
        assert await stopping == []
        assert not rt.dispatcher.active


async def test_no_new_flows_while_draining(echo_port: int) -> None:
    async with running(_config()) as rt:
        drv = driver_of(rt)
        app, task = drv.open_tcp("10.9.0.2:4000", f"127.0.0.1:{echo_port}")
        await app.send(b"x")
        await app.recv_exactly(1)
        stopping = asyncio.create_task(rt.stop(drain_timeout=10.0))
        await asyncio.sleep(0.05)
        with pytest.raises(RuntimeError, match="not accepting"):
            drv.open_tcp("10.9.0.2:4001", f"127.0.0.1:{echo_port}")
        app.shutdown_write()
        await app.recv_all()
        await task
        await stopping


async def test_flows_past_the_drain_timeout_are_reset(echo_port: int) -> None:
    async with running(_config()) as rt:
        drv = driver_of(rt)
        app, task = drv.open_tcp("10.9.0.2:4000", f"127.0.0.1:{echo_port}")
        await app.send(b"idle")
        assert await app.recv_exactly(4) == b"idle"
        errors = await rt.stop(drain_timeout=0.2)  # the app never closes: the flow outlives the drain
        assert errors == []
        assert task.done()
        assert app.reset  # cut by shutdown: a reset, so the app cannot take it for a complete stream
        assert not rt.dispatcher.active
