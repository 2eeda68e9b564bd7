"""relay(): both directions, Xray's policy timeouts, failures and cancellation."""

from __future__ import annotations

import asyncio
import time

import pytest
from tunray.policy import LevelPolicy
from tunray.relay import IdleTimeout, relay
from tunray.testing.links import BytePipe

POLICY = LevelPolicy(handshake=4.0, conn_idle=0.2, uplink_only=0.1, downlink_only=0.15)


class Silent:
    """A stream that never sends and swallows writes."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.eof = False

    async def read(self, max_bytes: int = 65536) -> bytes:
        await asyncio.Event().wait()
        return b""

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    async def write_eof(self) -> None:
        self.eof = True


class Ended(Silent):
    async def read(self, max_bytes: int = 65536) -> bytes:
        return b""


class Failing(Silent):
    async def read(self, max_bytes: int = 65536) -> bytes:
        await asyncio.sleep(0.01)
        raise ConnectionResetError("boom")


class Counter:
    uplink_bytes = 0
    downlink_bytes = 0


async def test_copies_both_ways_and_half_closes() -> None:
    app_in, up_in = BytePipe(), BytePipe()
    await app_in.write(b"hello")
    app_in.feed_eof()
    await up_in.write(b"world!")
    up_in.feed_eof()

    class Side:
        def __init__(self, inbox: BytePipe) -> None:
            self.inbox, self.out, self.eof = inbox, bytearray(), False

        async def read(self, max_bytes: int = 65536) -> bytes:
            return await self.inbox.read(max_bytes)

        async def write(self, data: bytes | bytearray | memoryview) -> None:
            self.out += data

        async def write_eof(self) -> None:
            self.eof = True

    app, upstream, counter = Side(app_in), Side(up_in), Counter()
    await relay(app, upstream, POLICY, counter)
    assert bytes(upstream.out) == b"hello" and upstream.eof
    assert bytes(app.out) == b"world!" and app.eof
    assert (counter.uplink_bytes, counter.downlink_bytes) == (5, 6)


@pytest.mark.parametrize(
    ("app", "upstream", "low", "high"),
    [
        (Silent, Silent, 0.15, 0.6),  # connIdle
        (Ended, Silent, 0.1, 0.5),  # app half-closed: downlinkOnly
        (Silent, Ended, 0.05, 0.45),  # upstream half-closed: uplinkOnly
    ],
    ids=["conn-idle", "downlink-only", "uplink-only"],
)
async def test_policy_timeouts(app: type[Silent], upstream: type[Silent], low: float, high: float) -> None:
    started = time.monotonic()
    with pytest.raises(IdleTimeout):
        await relay(app(), upstream(), POLICY)
    assert low < time.monotonic() - started < high


async def test_both_ends_done_returns() -> None:
    await relay(Ended(), Ended(), POLICY)


async def test_a_failing_direction_ends_the_flow_with_its_error() -> None:
    started = time.monotonic()
    with pytest.raises(ConnectionResetError):
        await relay(Silent(), Failing(), POLICY)  # downlink fails while the uplink waits
    assert time.monotonic() - started < 0.15
    with pytest.raises(ConnectionResetError):
        await relay(Failing(), Silent(), POLICY)


async def test_external_cancel_propagates_and_leaves_no_task() -> None:
    task = asyncio.create_task(relay(Silent(), Silent(), LevelPolicy()))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The test runner fails the test if relay() left its downlink task behind.
    assert task.done()
