"""Copying a TCP flow between the app's link and an upstream stream.

Two copy loops run side by side, one per direction (the uplink in the caller's task,
the downlink in one more task); each reads a chunk and awaits the write, so
backpressure is end to end: a slow reader on one side stops the loop, which stops
reading the other side, whose TCP window then closes.

When both ends are bare kernel sockets (:meth:`~tunray.bytestream.ByteStream.take_for_splice`,
e.g. ``freedom`` behind a ``system`` stack or a socket inbound), a bulk flow switches to
``splice(2)`` (:mod:`tunray.splice`): the same ends, timers and counters, without copying
the bytes through Python.  Every flow starts copying; once one direction has copied
:data:`SPLICE_AFTER` bytes it drains its destination and asks to switch, the other
direction's loop is cancelled where it waits, and both streams hand over what they had
buffered (sent first by the splice loops).  A refused hand-over copies on, starting with
what was handed over, and asks again after another :data:`SPLICE_AFTER` bytes.

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

from tunray import splice
from tunray.bytestream import ByteStream
from tunray.policy import LevelPolicy
from tunray.sockcopy import SocketCopy


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

#: Bytes one direction copies before the flow tries to switch to ``splice(2)``.  Setting a
#: splice up costs ~50 µs per direction (two ``dup``\ s, a pipe resized to 1 MiB, readiness
#: waits on new descriptors), which copying through Python (~1.7 µs/KiB against ~0.8 for
#: splice, bench/bench_splice.py) earns back after ~50 KiB; a short flow never pays it.
SPLICE_AFTER = 64 * 1024


#: Idle checks run in slots of this many seconds: a check is at most one slot late.
IDLE_SLOT = 1 / 32


class _Slots:
    """Every relay's idle check on one loop, grouped in :data:`IDLE_SLOT` slots.

    One ``call_later`` per slot that holds a check, not one per flow and per re-arm: a
    short flow arms its check three times (``connIdle``, then ``downlinkOnly`` and
    ``uplinkOnly`` as its directions end), each a dict insertion here instead of a timer
    made and cancelled (~2 µs each with uvloop).
    """

    __slots__ = ("loop", "slots")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.slots: dict[int, dict[_Watch, None]] = {}

    def add(self, watch: _Watch, when: float) -> None:
        k = int(when / IDLE_SLOT) + 1  # checked at the end of the slot *when* falls in
        slot = self.slots.get(k)
        if slot is None:
            slot = self.slots[k] = {}
            self.loop.call_later(k * IDLE_SLOT - time.monotonic(), self._due, k)
        slot[watch] = None
        watch.slot = k

    def remove(self, watch: _Watch) -> None:
        slot = self.slots.get(watch.slot)
        if slot is not None:
            slot.pop(watch, None)

    def _due(self, k: int) -> None:
        slot = self.slots.pop(k, None)
        if slot:
            for watch in slot:
                watch.check()


_slots: _Slots | None = None


def _slots_of(loop: asyncio.AbstractEventLoop) -> _Slots:
    global _slots
    s = _slots
    if s is None or s.loop is not loop:
        s = _slots = _Slots(loop)
    return s


class _Watch:
    """One flow's idle timeout: activity stamps :attr:`last`, :class:`_Slots` checks it when due."""

    __slots__ = ("deadline_after", "expired", "last", "slot", "slots", "task", "when")

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[None], idle: float) -> None:
        self.slots = _slots_of(loop)
        self.task = task
        self.last = time.monotonic()
        self.deadline_after = idle
        self.expired = False
        self.slot = 0
        self.when = self.last + idle
        self.slots.add(self, self.when)

    def check(self) -> None:
        deadline = self.last + self.deadline_after
        if deadline <= time.monotonic():
            self.expired = True
            self.task.cancel(msg="idle")
        else:
            self.when = deadline
            self.slots.add(self, deadline)

    def tighten(self, seconds: float) -> None:
        """After one direction ends, the other gets *seconds* from now at most."""
        self.last = now = time.monotonic()
        self.deadline_after = after = min(self.deadline_after, seconds)
        if self.when <= now + after:
            return  # the armed check comes first and re-arms from ``last``
        self.when = now + after
        self.slots.remove(self)
        self.slots.add(self, self.when)

    def cancel(self) -> None:
        self.slots.remove(self)


def _take_for_splice(app: Stream, upstream: Stream) -> tuple[tuple[int, int] | None, bytes, bytes]:
    """(both descriptors if splicing, bytes taken from the app, bytes taken from upstream)."""
    if not isinstance(app, ByteStream) or not isinstance(upstream, ByteStream):
        return None, b"", b""
    a, u = app.fileno(), upstream.fileno()
    if a is None or u is None:
        return None, b"", b""
    from_app = app.take_for_splice()
    if from_app is None:
        return None, b"", b""
    from_up = upstream.take_for_splice()
    if from_up is None:
        return None, from_app, b""  # copy after all, starting with what was taken
    return (a, u), from_app, from_up


class _Relay:
    """One flow's relay: the copy loops, the switch to splice, and what they share.

    The uplink loop runs in the caller's task (:attr:`this`), the downlink loop in
    :attr:`down`.  A loop that has copied :data:`SPLICE_AFTER` bytes since it started
    (or since the last try) drains its destination and asks to switch; the loop on the
    other side is then cancelled where it waits, which is safe: a copy loop never holds
    a byte across an ``await`` (``write`` hands the bytes to the stream before waiting).
    """

    __slots__ = (
        "app",
        "copied",
        "counter",
        "down",
        "down_done",
        "dups",
        "failed",
        "from_app",
        "from_up",
        "loop",
        "own_cancels",
        "policy",
        "sockcopy",
        "spliceable",
        "switch_cancels",
        "this",
        "up_active",
        "up_done",
        "upstream",
        "watch",
    )

    def __init__(self, app: Stream, upstream: Stream, policy: LevelPolicy, counter: Counter | None) -> None:
        this = asyncio.current_task()
        assert this is not None
        self.this = this
        self.loop = this.get_loop()  # (each get_running_loop() is a getpid() on Python 3.11)
        self.app = app
        self.upstream = upstream
        self.policy = policy
        self.counter = counter
        self.watch = _Watch(self.loop, this, policy.conn_idle)
        self.spliceable = splice.AVAILABLE  # and both ends bare sockets: asked when it matters
        self.down: asyncio.Task[bool] | None = None
        self.failed: asyncio.Task[Any] | None = None
        self.dups: splice.Duplicates | None = None
        self.from_app = self.from_up = b""  # taken for a splice, written first when copying resumes
        self.up_active = self.up_done = self.down_done = False
        self.own_cancels = 0  # cancels of this task by the relay itself: idle, downlink failed
        self.switch_cancels = 0  # ... and by the downlink asking to splice
        self.copied = 0  # bytes the copy loops moved (both ways)
        self.sockcopy: SocketCopy | None = None  # both ends bare sockets: copied from callbacks

    def _fail_fast(self, t: asyncio.Task[Any]) -> None:
        # The flow ends at once if the downlink fails, even while the uplink waits.
        if not t.cancelled() and t.exception() is not None:
            self.failed = t
            self.own_cancels += 1
            self.this.cancel(msg="downlink failed")

    def _spawn_down(self, coro: Coroutine[Any, Any, bool]) -> asyncio.Task[bool]:
        down = self.down = self.loop.create_task(coro)
        down.add_done_callback(self._fail_fast)
        return down

    async def _may_switch(self, dst: Stream) -> bool:
        """After :data:`SPLICE_AFTER` bytes: whether to stop copying and splice (dst drained)."""
        app, upstream = self.app, self.upstream
        if not (self.spliceable and not self.up_done and not self.down_done):
            return False
        if not (isinstance(app, ByteStream) and isinstance(upstream, ByteStream) and isinstance(dst, ByteStream)):
            self.spliceable = False
            return False
        if app.fileno() is None or upstream.fileno() is None:
            return False
        await dst.drain_for_splice()
        return not (self.up_done or self.down_done)

    async def _copy_up(self) -> bool:
        """Copy app -> upstream; True if it stopped to switch to splice."""
        app, upstream, watch, counter = self.app, self.upstream, self.watch, self.counter
        data, self.from_app = self.from_app, b""
        moved = 0
        while True:
            if not data:
                data = await app.read(CHUNK)
                if not data:
                    break
            watch.last = time.monotonic()
            n = len(data)
            if counter is not None:
                counter.uplink_bytes += n
            await upstream.write(data)
            data = b""
            moved += n
            self.copied += n
            if moved >= SPLICE_AFTER:
                moved = 0
                if await self._may_switch(upstream):
                    return True
        await upstream.write_eof()
        self.up_done = True
        watch.tighten(self.policy.downlink_only)
        return False

    async def _copy_down(self) -> bool:
        """Copy upstream -> app; True if it stopped to switch to splice."""
        app, upstream, watch, counter = self.app, self.upstream, self.watch, self.counter
        moved = 0
        while True:
            data = await upstream.read(CHUNK)
            if not data:
                break
            watch.last = time.monotonic()
            n = len(data)
            if counter is not None:
                counter.downlink_bytes += n
            await app.write(data)
            moved += n
            self.copied += n
            if moved >= SPLICE_AFTER:
                moved = 0
                if await self._may_switch(app):
                    if self.up_active:  # the uplink waits in the caller's task: stop it there
                        self.switch_cancels += 1
                        self.this.cancel(msg="splice")
                    return True
        await app.write_eof()
        self.down_done = True
        watch.tighten(self.policy.uplink_only)
        return False

    def use_sockcopy(self) -> bool:
        """Copy from loop callbacks (:mod:`tunray.sockcopy`) if both ends are bare, idle sockets."""
        app, upstream = self.app, self.upstream
        if not isinstance(app, ByteStream) or not isinstance(upstream, ByteStream):
            return False
        a = app.socket_stream()
        if a is None:
            return False
        u = upstream.socket_stream()
        if u is None or not SocketCopy.usable(a, u):
            return False
        policy = self.policy
        self.sockcopy = SocketCopy(
            a, u, self.watch, self.counter, uplink_only=policy.uplink_only, downlink_only=policy.downlink_only,
            splice_after=SPLICE_AFTER, can_splice=self.spliceable,
        )
        return True

    async def copy_sockets(self) -> bool:
        """:meth:`copy` from loop callbacks: True if both stopped to switch to splice."""
        sc = self.sockcopy
        assert sc is not None
        try:
            return await sc.run()
        finally:
            self.copied += sc.copied
            sc.copied = 0
            self.up_done, self.down_done = sc.up.done, sc.down.done

    async def copy(self) -> bool:
        """Copy both ways until both end (False) or one side asks to splice (True, both stopped)."""
        down = None if self.down_done else self._spawn_down(self._copy_down())
        switch = False
        if not self.up_done:
            self.up_active = True
            try:
                switch = await self._copy_up()
            except asyncio.CancelledError:
                if not self.switch_cancels:
                    raise
                left = 1
                while self.switch_cancels:
                    self.switch_cancels -= 1
                    left = self.this.uncancel()
                if left:
                    raise
                switch = True
            finally:
                self.up_active = False
        if down is None:
            return switch
        if switch:
            down.cancel()  # a no-op if it already stopped to switch itself
            try:
                await down
            except asyncio.CancelledError:
                if self.this.cancelling():
                    raise
            return True
        return await down

    def take(self) -> bool:
        """Both loops stopped: hand the descriptors to splice, or keep what was taken and copy on."""
        fds, from_app, from_up = _take_for_splice(self.app, self.upstream)
        self.from_app = from_app
        if fds is None:
            return False
        self.from_up = from_up
        self.dups = splice.Duplicates(*fds)
        splice.stats.flows += 1
        splice.stats.copied += self.copied
        return True

    def _up_bytes(self, n: int) -> None:
        self.watch.last = time.monotonic()
        if self.counter is not None:
            self.counter.uplink_bytes += n

    def _down_bytes(self, n: int) -> None:
        self.watch.last = time.monotonic()
        if self.counter is not None:
            self.counter.downlink_bytes += n

    async def _splice_down(self) -> bool:
        assert self.dups is not None
        await splice.splice_one_way(self.dups.fds[1], self.dups.fds[0], self._down_bytes, self.from_up)
        self.watch.tighten(self.policy.uplink_only)
        return False

    async def splice(self) -> None:
        """Splice both ways until both directions end."""
        assert self.dups is not None
        down = self._spawn_down(self._splice_down())
        await splice.splice_one_way(self.dups.fds[0], self.dups.fds[1], self._up_bytes, self.from_app)
        self.watch.tighten(self.policy.downlink_only)
        await down

    async def close(self) -> None:
        self.watch.cancel()
        down = self.down
        if down is not None:
            down.remove_done_callback(self._fail_fast)
            if not down.done():
                down.cancel()
                await asyncio.gather(down, return_exceptions=True)
        if self.dups is not None:
            self.dups.close()


async def relay(app: Stream, upstream: Stream, policy: LevelPolicy, counter: Counter | None = None) -> None:
    """Copy both ways until both directions end; raises :class:`IdleTimeout` on a policy timeout.

    A reset of either side (:class:`~tunray.bytestream.StreamReset`) is raised, so the
    caller resets the other side.
    """
    r = _Relay(app, upstream, policy, counter)
    this = r.this
    try:
        fast = r.use_sockcopy()
        # (a refused hand-over leaves what it took from the app in from_app: the loops copy it first)
        while await (r.copy_sockets() if fast and not r.from_app else r.copy()):
            if r.take():
                await r.splice()
                break
    except asyncio.CancelledError:
        if r.watch.expired:
            r.own_cancels += 1
        while r.own_cancels:
            r.own_cancels -= 1
            if this.uncancel() == 0:
                failed = r.failed
                if failed is not None and (exc := failed.exception()) is not None:
                    raise exc from None
                raise IdleTimeout("flow idle timeout") from None
        raise
    finally:
        await r.close()


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
