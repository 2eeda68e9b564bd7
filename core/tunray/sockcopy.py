"""The relay's copy between two kernel sockets, from event-loop callbacks.

When both ends of a flow are bare kernel sockets (:meth:`~tunray.bytestream.ByteStream.socket_stream`:
``freedom`` behind the ``system`` stack), :func:`tunray.relay.relay` copies with a
:class:`SocketCopy` instead of two copy loops: a readability callback per direction does
``recv`` and ``send`` and nothing else, so a short flow pays no task, future or task step
per chunk (a 32-byte echo: ~18 µs of CPU less per connection than the loops).  The flow's
task only waits on one future for the end (or a reason to stop).

The semantics are the copy loops': every chunk is written before the next is read, and
what the destination's kernel buffer does not take is kept and sent from a writability
callback while the source is not read (backpressure end to end); a clean end of one side
(``recv`` returns ``b""``) is passed on as ``shutdown(SHUT_WR)`` once every byte before it
is sent; a socket error on either side ends the flow with
:class:`~tunray.bytestream.StreamReset` (the caller resets both sides).  uvloop reports a
socket error (POLLERR) by running the callback once and closing its watch, so a reset
that came with the last data would go unheard: after a ``recv`` that did not fill its
buffer the reader is registered again once the loop's callbacks ran (:class:`_Rearm`),
which costs no system call on a live watch and finds a closed one.

A direction that has copied :data:`~tunray.relay.SPLICE_AFTER` bytes asks to switch to
``splice(2)``: each direction stops once its kept bytes are sent, and the future resolves
with ``True``; the relay then hands the sockets over as it does after the copy loops.  The
switch is not asked while the other direction keeps bytes (an app that reads only after
it has sent everything would stall both ways).  One callback copies at most
:data:`CHUNKS_PER_CALL` chunks, then reads on after the loop's other callbacks; sending
kept bytes counts as activity for the idle timeout, as a ``recv`` does.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Protocol

from tunray.bytestream import StreamClosed
from tunray.net.stream import reset_error

if TYPE_CHECKING:
    from tunray.net.stream import SocketStream

CHUNK = 256 * 1024
CHUNKS_PER_CALL = 8  # then the callback returns and reads on after the loop's other work (fairness)


class Counter(Protocol):
    uplink_bytes: int
    downlink_bytes: int


class Clock(Protocol):
    """What the copy stamps on activity (the relay's idle watch)."""

    last: float

    def tighten(self, seconds: float) -> None: ...


class _Rearm:
    """Registers readers again after the loop's current callbacks, for every direction that asked.

    uvloop runs a reader's callback once more when the poll reports POLLERR (a reset) and
    then closes that poll: a direction whose last ``recv`` returned data (a reset right
    behind it is only reported by the next ``recv``) would never hear of its socket again.
    Registering again costs ~0.3 µs on a live poll (the callback is replaced) and makes a
    new poll on a closed one, which reports the error at once; reading on until EAGAIN
    instead costs a system call and an exception per chunk.
    """

    __slots__ = ("dirs", "loop", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dirs: list[_Direction] = []
        self.scheduled = False

    def run(self) -> None:
        self.scheduled = False
        dirs, self.dirs = self.dirs, []
        for d in dirs:
            src = d.src
            if src._reading and not d.copy.finished.done():  # still reading (not paused, ended or stopped)
                src._watch_reads(d.on_readable)


_rearm: _Rearm | None = None


def _rearm_later(d: _Direction) -> None:
    global _rearm
    r = _rearm
    loop = d.src._loop
    if r is None or r.loop is not loop:
        r = _rearm = _Rearm(loop)
    r.dirs.append(d)
    if not r.scheduled:
        r.scheduled = True
        loop.call_soon(r.run)


class _Direction:
    """One way of the copy: *src* is read from callbacks, *dst* written."""

    __slots__ = ("copy", "done", "dst", "kept", "moved", "on_readable", "on_writable", "src", "up")

    def __init__(self, copy: SocketCopy, src: SocketStream, dst: SocketStream, up: bool) -> None:
        self.copy = copy
        self.src = src
        self.dst = dst
        self.up = up
        self.kept: memoryview | None = None  # bytes read that dst's kernel did not take yet
        self.done = False  # src reached EOF (and dst was or will be shut down)
        self.moved = 0  # bytes since the last splice check
        self.on_readable = self._on_readable  # bound once: registered again after each pause
        self.on_writable = self._on_writable

    def start(self) -> None:
        if not self.done and self.kept is None:
            self.src._watch_reads(self.on_readable)

    def stop(self) -> None:
        self.src._stop_reading()
        if self.kept is not None:
            self.dst._stop_writing()

    def _on_readable(self) -> None:
        try:
            self._copy()
        except Exception as exc:  # a bug or MemoryError: end the flow, not a loop-handler line per wake-up
            self.copy.fail(exc)

    def _copy(self) -> None:
        copy, src, dst = self.copy, self.src, self.dst
        recv, send = src._sock.recv, dst._sock.send
        for _ in range(CHUNKS_PER_CALL):
            try:
                data = recv(CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                src._exc = reset_error(exc)
                copy.fail(src._exc)
                return
            if not data:
                src._eof = True
                self._end()
                return
            n = len(data)
            copy.clock.last = time.monotonic()
            counter = copy.counter
            if counter is not None:
                if self.up:
                    counter.uplink_bytes += n
                else:
                    counter.downlink_bytes += n
            copy.copied += n
            try:
                sent = send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                dst._exc = reset_error(exc)
                copy.fail(dst._exc)
                return
            if sent < n:
                self.kept = memoryview(data)[sent:]
                src._stop_reading()
                dst._watch_writes(self.on_writable)
                self.moved += n
                return
            moved = self.moved = self.moved + n
            if moved >= copy.splice_after:
                self.moved = 0
                if copy.want_splice():
                    return
            if n < CHUNK:  # most likely drained: no recv that would only say EAGAIN
                break
        # drained, or this call had its share of the loop (other flows, the TUN, timers wait):
        # read on after the loop's other callbacks
        _rearm_later(self)

    def _on_writable(self) -> None:
        try:
            self._flush_kept()
        except Exception as exc:
            self.copy.fail(exc)

    def _flush_kept(self) -> None:
        kept = self.kept
        if kept is None:
            return
        dst = self.dst
        try:
            sent = dst._sock.send(kept)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            dst._exc = reset_error(exc)
            self.copy.fail(dst._exc)
            return
        if sent:  # a slow reader taking what was read long ago is activity too (not only a recv)
            self.copy.clock.last = time.monotonic()
        if sent < len(kept):
            self.kept = kept[sent:]
            return
        self.kept = None
        dst._stop_writing()
        copy = self.copy
        if self.done:
            self._shut()
        elif copy.switching:
            copy.stopped()
        elif self.moved >= copy.splice_after and copy.can_splice:
            self.moved = 0
            if not copy.want_splice():
                self.start()
        else:
            self.start()

    def _end(self) -> None:
        self.done = True
        self.src._stop_reading()
        copy = self.copy
        copy.clock.tighten(copy.downlink_only if self.up else copy.uplink_only)
        if self.kept is None:
            self._shut()

    def _shut(self) -> None:
        dst = self.dst
        dst._write_closed = True
        dst._shutdown()
        self.copy.stopped()


class SocketCopy:
    """Copies both ways between *app* and *upstream* from loop callbacks; see the module docstring.

    :attr:`finished` resolves with ``False`` once both directions ended, ``True`` when both
    stopped to switch to splice; it raises what ended the flow (a reset).  The streams'
    own closing (``abort``/``aclose`` by their owners, or a stack shutting down) also
    resolves it: :meth:`result` then reports the stream as closed.
    """

    __slots__ = (
        "app",
        "can_splice",
        "clock",
        "copied",
        "counter",
        "down",
        "downlink_only",
        "error",
        "finished",
        "splice_after",
        "switching",
        "up",
        "uplink_only",
        "upstream",
    )

    def __init__(
        self,
        app: SocketStream,
        upstream: SocketStream,
        clock: Clock,
        counter: Counter | None,
        *,
        uplink_only: float,
        downlink_only: float,
        splice_after: int,
        can_splice: bool,
    ) -> None:
        self.app = app
        self.upstream = upstream
        self.clock = clock
        self.counter = counter
        self.uplink_only = uplink_only
        self.downlink_only = downlink_only
        self.splice_after = splice_after if can_splice else 1 << 62
        self.can_splice = can_splice
        self.up = _Direction(self, app, upstream, True)
        self.down = _Direction(self, upstream, app, False)
        self.copied = 0
        self.error: BaseException | None = None
        self.switching = False
        self.finished: asyncio.Future[None] = app._loop.create_future()

    @staticmethod
    def usable(a: SocketStream, b: SocketStream) -> bool:
        """Whether both streams are open, idle and unread-from (nothing kept or awaited)."""
        for s in (a, b):
            if (s._closed or s._local or s._eof or s._write_closed or s._exc is not None or s._wbuf is not None
                    or s._read_waiter is not None or s._write_waiter is not None):
                return False
        return a._loop is b._loop

    async def run(self) -> bool:
        """Copy until both directions end (False) or both stopped to splice (True)."""
        app, upstream = self.app, self.upstream
        fut = self.finished
        if fut.done():
            fut = self.finished = app._loop.create_future()
        self.switching = False
        # a stream closed meanwhile by its owner (a stack resetting its flows) wakes the
        # reader it believes waits: this future
        app._read_waiter = upstream._read_waiter = fut
        try:
            self.up.start()
            self.down.start()
            await fut
        finally:
            app._read_waiter = upstream._read_waiter = None
            self.up.stop()
            self.down.stop()
        if self.error is not None:
            raise self.error
        if app._closed or upstream._closed or app._local or upstream._local:
            raise StreamClosed("the flow's socket was closed")
        return self.switching

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        if not self.finished.done():
            self.finished.set_result(None)

    def want_splice(self) -> bool:
        """A direction copied enough to splice: stop both once idle (True: this one stops now)."""
        if self.up.done or self.down.done:
            return False  # a half-closed flow copies on
        if self.up.kept is not None or self.down.kept is not None:
            # the other way waits for its destination: stopping this one now could stall
            # both (an app that reads only after it has sent everything); ask again later
            return False
        self.switching = True
        for d in (self.up, self.down):
            if d.kept is None:
                d.src._stop_reading()
        self.stopped()
        return True

    def stopped(self) -> None:
        """A direction ended or stopped: resolve :attr:`finished` once both have."""
        up, down = self.up, self.down
        if up.kept is not None or down.kept is not None:
            return
        if (up.done and down.done) or self.switching:
            if not self.finished.done():
                self.finished.set_result(None)
