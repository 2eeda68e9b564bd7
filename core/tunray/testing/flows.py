"""Flow checks for proxy tests against a real server: bulk both ways, many flows, UDP, kills.

Each takes a driver inbound (:func:`tunray.testing.harness.driver_of`) whose runtime
routes to the proxy under test, and a destination served by :mod:`tunray.testing.echo`
behind the server.  They fail with a message saying what differed.

Half-close: :func:`echo_bulk` closes the app's write side only after every byte came
back, because servers such as Xray do not carry a TCP half-close through (Xray ends
the connection about a second after the uplink ends).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

from tunray.net.address import Destination, Network
from tunray.testing.echo import pattern

__all__ = ["concurrent_echo", "echo_bulk", "killed_server_resets", "udp_echo"]


async def echo_bulk(drv: Any, target: Destination, size: int, source: str = "10.0.0.2:40001") -> None:
    """*size* bytes up into a TCP echo and the same back down at once, SHA-256 checked."""
    app, task = drv.open_tcp(source, target)
    payload = pattern(size, seed=size & 0xFFFF)

    async def upload() -> None:
        for i in range(0, size, 1 << 18):
            await app.send(payload[i : i + (1 << 18)])

    async def download() -> bytes:
        h = hashlib.sha256()
        n = 0
        while n < size:
            chunk = await app.recv(1 << 20)
            assert chunk, f"the echo ended after {n} of {size} bytes (reset={app.reset})"
            h.update(chunk)
            n += len(chunk)
        assert n == size, f"the echo returned {n} bytes, {size} sent"
        return h.digest()

    _, digest = await asyncio.gather(upload(), download())
    assert digest == hashlib.sha256(payload).digest(), "echoed bytes differ"
    app.shutdown_write()
    assert await app.recv_all() == b""
    await asyncio.wait_for(task, 15)


async def concurrent_echo(drv: Any, target: Destination, flows: int = 100, size: int = 64 * 1024) -> None:
    """*flows* TCP flows at once, each echoing its own bytes."""

    async def one(i: int) -> None:
        app, task = drv.open_tcp(f"10.0.{1 + i // 250}.{2 + i % 250}:{20000 + i}", target)
        data = pattern(size + i, seed=i)
        await app.send(data)
        got = await app.recv_exactly(len(data))
        assert got == data, f"flow {i}: echoed bytes differ"
        app.shutdown_write()
        await app.recv_all()
        await asyncio.wait_for(task, 15)

    await asyncio.gather(*(one(i) for i in range(flows)))


async def udp_echo(drv: Any, target: Destination, count: int = 20) -> None:
    """Datagrams to a UDP echo come back intact, from the echo's address."""
    app, task = drv.open_udp("10.0.0.2:5353", target)
    for i in range(count):
        msg = pattern(100 + i * 50, seed=i)
        app.send(msg, target)
        packet = await asyncio.wait_for(app.recv(), 10)
        assert packet.data == msg, f"datagram {i} differs"
        assert packet.peer.port == target.port
    app.close()
    await asyncio.wait_for(task, 10)


async def killed_server_resets(drv: Any, target: Destination, kill: Callable[[], None], chunks: int = 400) -> None:
    """Kill the server while a flow streams through it: the app must see a reset, not a clean end."""
    assert target.network is Network.TCP
    app, task = drv.open_tcp("10.0.0.2:40000", target)
    chunk = pattern(1 << 16, seed=3)
    for i in range(chunks):
        try:
            await asyncio.wait_for(app.send(chunk), 5)
            if not await asyncio.wait_for(app.recv(1 << 20), 5):
                break
        except Exception:
            break
        if i == 20:
            kill()
    while await app.recv(1 << 20):
        pass
    await asyncio.wait_for(task, 15)
    assert app.reset, "a killed server must reach the app as a reset, not a clean end"
