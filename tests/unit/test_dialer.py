"""Dialer.connect_tcp against real loopback sockets: success, refusal, timeout, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
from collections.abc import AsyncIterator

import pytest
from tunray.net.address import Destination, Network
from tunray.net.dialer import Dialer, DialError


def _dest(port: int) -> Destination:
    return Destination(Network.TCP, ipaddress.ip_address("127.0.0.1"), port)


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextlib.asynccontextmanager
async def _unanswering_port() -> AsyncIterator[int]:
    """A loopback port whose listener's accept queue is full: further SYNs are dropped."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        await asyncio.sleep(0.1)
        yield port
    finally:
        for s in fillers:
            s.close()
        srv.close()


async def test_connects_a_numeric_address_without_a_resolver_thread() -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        threads = _threads()
        sock = await Dialer().connect_tcp(_dest(srv.getsockname()[1]))
        with sock:
            peer, _ = srv.accept()
            with peer:
                assert sock.getpeername() == srv.getsockname()
                assert not sock.getblocking()
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
                sock.send(b"ping")
                assert peer.recv(4) == b"ping"
        # uvloop's sock_connect would have resolved "127.0.0.1" on libuv's thread pool (4 threads)
        assert _threads() == threads


async def test_refused_is_a_dial_error_and_leaks_nothing() -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
    fds = _fds()
    with pytest.raises(DialError, match="refused"):
        await Dialer().connect_tcp(_dest(port))
    assert _fds() == fds


async def test_times_out_when_nothing_answers() -> None:
    async with _unanswering_port() as port:
        fds = _fds()
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(TimeoutError):
            await Dialer().connect_tcp(_dest(port), timeout=0.3)
        assert 0.25 <= loop.time() - start < 2.0
        assert _fds() == fds


async def test_cancelled_dial_closes_its_socket_and_unregisters() -> None:
    async with _unanswering_port() as port:
        fds = _fds()
        task = asyncio.get_running_loop().create_task(Dialer().connect_tcp(_dest(port), timeout=30))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert _fds() == fds
