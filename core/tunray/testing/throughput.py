"""One-stream throughput through a driver inbound, for benchmarks (never timed assertions in tests).

Both measurements open a flow from :class:`~tunray.testing.driver.DriverInbound` to
the servers of :mod:`tunray.testing.echo` listening at *port* (echo) and *port* + 1
(source), on *host*, and return MiB/s.  They check that every byte arrived; the
clock stops at the last byte, before the flow is closed.

* :func:`echo_mib_s`: *size* bytes up and the same bytes back, both at once.
* :func:`download_mib_s`: *size* bytes from the source.
"""

from __future__ import annotations

import asyncio
import struct
import time

from tunray.net.address import Destination, Network, parse_host
from tunray.testing.driver import DriverInbound
from tunray.testing.echo import pattern
from tunray.testing.links import AppEnd

BLOCK = 1 << 18  # bytes per send
MIB = 1 << 20


async def _receive(app: AppEnd, size: int, what: str) -> None:
    got = 0
    while got < size:
        chunk = await app.recv(MIB)
        if not chunk:
            raise RuntimeError(f"{what} ended after {got} of {size} bytes")
        got += len(chunk)


async def echo_mib_s(drv: DriverInbound, port: int, size: int, host: str = "127.0.0.1") -> float:
    """Send *size* bytes (rounded down to whole blocks of 256 KiB) to the echo and read them back."""
    app, task = drv.open_tcp("10.0.0.2:30000", Destination(Network.TCP, parse_host(host), port))
    block = pattern(BLOCK)
    size -= size % BLOCK
    started = time.monotonic()

    async def send() -> None:
        for _ in range(size // BLOCK):
            await app.send(block)

    sender = asyncio.create_task(send())
    await _receive(app, size, "echo")
    elapsed = time.monotonic() - started
    await sender
    app.shutdown_write()
    await app.recv_all()
    await task
    return size / elapsed / MIB


async def download_mib_s(drv: DriverInbound, port: int, size: int, host: str = "127.0.0.1") -> float:
    """Ask the source at *port* + 1 for *size* bytes and read them."""
    app, task = drv.open_tcp("10.0.0.2:30001", Destination(Network.TCP, parse_host(host), port + 1))
    started = time.monotonic()
    await app.send(struct.pack("!Q", size))
    await _receive(app, size, "download")
    elapsed = time.monotonic() - started
    app.shutdown_write()
    extra = await app.recv_all()
    if extra:
        raise RuntimeError(f"the source sent {len(extra)} bytes more than {size}")
    await task
    return size / elapsed / MIB
