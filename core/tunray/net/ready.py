"""Waiting for a descriptor to become readable or writable, and connecting a socket with it.

:func:`connect` replaces ``loop.sock_connect`` for sockets the dialer made: uvloop's
``sock_connect`` resolves even a numeric address through ``getaddrinfo`` in libuv's
thread pool, a thread hop and an extra loop iteration per connection (measured: 80 µs
of CPU per loopback connect against 23 µs here, uvloop 0.23).  A connect that completes
inside the system call (loopback, a local namespace) is not waited for at all.
"""

from __future__ import annotations

import asyncio
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
    ``OSError`` as ``connect(2)``.
    """
    try:
        sock.connect(address)
        return True
    except BlockingIOError:  # EINPROGRESS
        pass
    try:
        sock.getpeername()  # the handshake already completed inside connect(2)
        return True
    except OSError:
        return False


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
