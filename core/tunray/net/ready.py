"""Waiting for a descriptor to become readable or writable, and connecting a socket with it.

:func:`connect` replaces ``loop.sock_connect`` for sockets the dialer made: uvloop's
``sock_connect`` resolves even a numeric address through ``getaddrinfo`` in libuv's
thread pool, a thread hop and an extra loop iteration per connection (measured: 80 µs
of CPU per loopback connect against 23 µs here, uvloop 0.23).  A connect that completes
inside the system call (loopback, a local namespace) is not waited for at all.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket


async def wait_ready(loop: asyncio.AbstractEventLoop, fd: int, write: bool) -> None:
    """Return once *fd* is writable (*write*) or readable; the watch is removed however it ends."""
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    (loop.add_writer if write else loop.add_reader)(fd, ready)
    try:
        await fut
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)


def connect_now(sock: socket.socket, address: tuple[str, int] | tuple[str, int, int, int]) -> bool:
    """Start connecting the non-blocking *sock* to the numeric *address*; True if it is connected.

    False: the handshake is in progress, finish it with :func:`wait_connected`.  Raises
    ``OSError`` as ``connect(2)``.  ``connect_ex`` both times: no exception object for the
    EINPROGRESS every non-blocking connect returns, nor for the probe.
    """
    err = sock.connect_ex(address)
    if err == 0:
        return True
    if err != errno.EINPROGRESS:
        raise OSError(err, os.strerror(err))
    # A second connect(2) says whether the handshake already completed inside the first
    # (loopback, a local namespace): EISCONN; EALREADY while in progress; else its error.
    err = sock.connect_ex(address)
    if err in (errno.EISCONN, 0):
        return True
    if err in (errno.EALREADY, errno.EINPROGRESS):
        return False
    raise OSError(err, os.strerror(err))


async def wait_connected(sock: socket.socket) -> None:
    """Wait for a connect in progress to complete; raises ``OSError`` as ``connect(2)`` would."""
    await wait_ready(asyncio.get_running_loop(), sock.fileno(), True)
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))


async def connect(sock: socket.socket, address: tuple[str, int] | tuple[str, int, int, int]) -> None:
    """Connect the non-blocking *sock* to the numeric *address*; raises ``OSError`` as ``connect(2)``."""
    if not connect_now(sock, address):
        await wait_connected(sock)
