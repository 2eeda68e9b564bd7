"""Copying a TCP flow between the app's link and an upstream stream.

Two copy loops run side by side, one per direction; each reads a chunk and awaits the
write, so backpressure is end to end: a slow reader on one side stops the loop, which
stops reading the other side, whose TCP window then closes.

Timeouts follow Xray's policy: the flow ends after ``connIdle`` seconds with no byte
in either direction; once the app half-closes (uplink done) the downlink has
``downlinkOnly`` seconds; once upstream half-closes (downlink done) the uplink has
``uplinkOnly`` seconds.  One timer per flow, re-armed lazily: activity only stamps
the time, so there is no timer work per chunk.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any, Protocol

from tunray.policy import LevelPolicy


class Stream(Protocol):
    async def read(self, max_bytes: int = 65536) -> bytes: ...

    async def write(self, data: bytes | bytearray | memoryview) -> None: ...

    async def write_eof(self) -> None: ...


class Counter(Protocol):
    uplink_bytes: int
    downlink_bytes: int


class IdleTimeout(TimeoutError):
    pass


CHUNK = 256 * 1024


class _Watch:
    __slots__ = ("deadline_after", "expired", "handle", "last", "loop", "task")

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[None], idle: float) -> None:
        self.loop = loop
        self.task = task
        self.last = time.monotonic()
        self.deadline_after = idle
        self.expired = False
        self.handle = loop.call_later(idle, self._check)

    def _check(self) -> None:
        remaining = self.last + self.deadline_after - time.monotonic()
        if remaining <= 0:
            self.expired = True
            self.task.cancel(msg="idle")
        else:
            self.handle = self.loop.call_later(remaining, self._check)

    def tighten(self, seconds: float) -> None:
        """After one direction ends, the other gets *seconds* from now at most."""
        self.last = time.monotonic()
        self.deadline_after = min(self.deadline_after, seconds)
        self.handle.cancel()
        self.handle = self.loop.call_later(seconds, self._check)

    def cancel(self) -> None:
        self.handle.cancel()


async def relay(app: Stream, upstream: Stream, policy: LevelPolicy, counter: Counter | None = None) -> None:
    """Copy both ways until both directions end; raises :class:`IdleTimeout` on a policy timeout."""
    loop = asyncio.get_running_loop()
    this = asyncio.current_task()
    assert this is not None
    watch = _Watch(loop, this, policy.conn_idle)

    async def uplink() -> None:
        while True:
            data = await app.read(CHUNK)
            if not data:
                break
            watch.last = time.monotonic()
            if counter is not None:
                counter.uplink_bytes += len(data)
            await upstream.write(data)
        await upstream.write_eof()
        watch.tighten(policy.downlink_only)

    async def downlink() -> None:
        while True:
            data = await upstream.read(CHUNK)
            if not data:
                break
            watch.last = time.monotonic()
            if counter is not None:
                counter.downlink_bytes += len(data)
            await app.write(data)
        await app.write_eof()
        watch.tighten(policy.uplink_only)

    up = loop.create_task(uplink())
    down = loop.create_task(downlink())
    try:
        # The flow ends when both directions are done, or at once if either fails.
        done, _pending = await asyncio.wait((up, down), return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            exc = t.exception()
            if exc is not None:
                raise exc
    except asyncio.CancelledError:
        if watch.expired and this.uncancel() == 0:
            raise IdleTimeout("flow idle timeout") from None
        raise
    finally:
        watch.cancel()
        for t in (up, down):
            t.cancel()
        await asyncio.gather(up, down, return_exceptions=True)


class Activity:
    """When a packet flow last moved a datagram (``touch()`` per datagram: one float store)."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()


async def run_pumps(pumps: list[Coroutine[Any, Any, None]], activity: Activity, idle: float) -> None:
    """Run a UDP flow's pumps until the first one ends or *idle* seconds pass without activity.

    The first pump's exception, if any, is raised; the other pumps are cancelled and awaited.
    """
    loop = asyncio.get_running_loop()

    async def watch() -> None:
        # Sleeps until the earliest possible expiry, then re-checks: no timer work per datagram.
        while True:
            left = activity.last + idle - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(left)

    tasks = [loop.create_task(p) for p in pumps]
    tasks.append(loop.create_task(watch()))
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if not t.cancelled() and (exc := t.exception()) is not None:
                raise exc
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
