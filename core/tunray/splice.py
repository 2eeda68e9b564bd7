"""Kernel-to-kernel copying with ``splice(2)`` when both ends of a flow are bare sockets.

Theory of operation.  When :func:`tunray.relay.relay` finds that a bulk flow's app link and
upstream stream are both plain kernel sockets with no write pending
(:meth:`~tunray.bytestream.ByteStream.take_for_splice`), each direction first sends
what the stream had already received, then moves bytes
socket → pipe → socket with ``os.splice`` and never copies them into Python.  The
streams' own transports have stopped reading; this module waits for readiness on a
``dup`` of each descriptor (so the event loop does not mistake it for the
transport's own registration) and closes the duplicates before it returns, so closing
or aborting the streams afterwards still sends the FIN or the RST at once.

Ends map as in the copy loop: ``splice`` returning 0 is the peer's FIN, passed on with
``shutdown(SHUT_WR)``; ``ECONNRESET``/``EPIPE`` is a reset, raised as
:class:`~tunray.bytestream.StreamReset` so the caller resets the other side.

:data:`stats` counts spliced flows and the bytes they moved (tests prove splicing
with it; the benchmark reports it).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from tunray.bytestream import StreamReset
from tunray.net.ready import wait_ready

_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
PIPE_SIZE = 1 << 20
AVAILABLE = hasattr(os, "splice")


@dataclass(slots=True)
class SpliceStats:
    #: flows that switched to splice
    flows: int = 0
    #: bytes those flows moved with splice (including what the streams had buffered)
    bytes: int = 0
    #: bytes those flows had copied before they switched
    copied: int = 0


stats = SpliceStats()


def _raise(exc: OSError, where: str) -> NoReturn:
    """Raise *exc* as a :class:`StreamReset` when it means the peer reset, else as is."""
    if exc.errno in _RESETS:
        raise StreamReset(f"{where}: {os.strerror(exc.errno or 0)}") from exc
    raise exc


_RESETS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT, errno.ECONNABORTED, errno.EHOSTUNREACH})


async def _send_all(loop: asyncio.AbstractEventLoop, fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            await wait_ready(loop, fd, True)
        except OSError as exc:
            _raise(exc, "writing the socket")


async def splice_one_way(src: int, dst: int, on_bytes: Callable[[int], None], first: bytes = b"") -> None:
    """Send *first*, then move bytes from socket *src* to socket *dst* until *src*'s EOF,
    then half-close *dst*.

    Both are descriptors this function may wait on (duplicates owned by the caller).
    """
    loop = asyncio.get_running_loop()
    if first:
        await _send_all(loop, dst, first)
        stats.bytes += len(first)
        on_bytes(len(first))
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        try:
            fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # the default 64 KiB pipe still works
        while True:
            try:
                n = os.splice(src, w, PIPE_SIZE, flags=_FLAGS)
            except BlockingIOError:
                await wait_ready(loop, src, False)
                continue
            except OSError as exc:
                _raise(exc, "reading the socket")
            if n == 0:
                break
            left = n
            while left:
                try:
                    left -= os.splice(r, dst, left, flags=_FLAGS)
                except BlockingIOError:
                    await wait_ready(loop, dst, True)
                except OSError as exc:
                    _raise(exc, "writing the socket")
            stats.bytes += n
            on_bytes(n)
        try:
            with socket.socket(fileno=os.dup(dst)) as half:
                half.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if exc.errno not in _RESETS and exc.errno != errno.ENOTCONN:
                raise
    finally:
        os.close(r)
        os.close(w)


class Duplicates:
    """``dup``\\ s of two descriptors for the splice loops, closed on exit."""

    __slots__ = ("fds",)

    def __init__(self, a: int, b: int) -> None:
        self.fds: list[int] = []
        for fd in (a, b):
            self.fds.append(os.dup(fd))

    def close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()
