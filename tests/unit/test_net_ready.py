"""tunray.net.ready.connect and the dialer: done at once when connect(2) completes the handshake, else waited for.

Loopback only.  The slow path is made real with a listener whose accept queue is full:
the kernel drops the SYN, so the connect is still in progress when connect(2) returns,
and completes when the SYN is sent again (after 1 s) once the queue has room.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import time

import pytest
from tunray.net.address import Destination, Network
from tunray.net.dialer import Dialer, DialError
from tunray.net.ready import connect


def _client() -> socket.socket:
    s = socket.socket()
    s.setblocking(False)
    return s


async def test_a_local_connect_completes_at_once() -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv, _client() as c:
        await connect(c, srv.getsockname())
        peer, _ = srv.accept()
        with peer:
            assert c.getpeername() == peer.getsockname()
            c.send(b"hi")
            assert peer.recv(2) == b"hi"


async def test_a_refused_connect_raises_econnrefused() -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
    with _client() as c, pytest.raises(OSError) as err:
        await connect(c, ("127.0.0.1", port))
    assert err.value.errno == errno.ECONNREFUSED


async def test_a_connect_in_progress_is_waited_for() -> None:
    with socket.socket() as srv, socket.create_connection((_listen(srv), srv.getsockname()[1])):
        # the accept queue (backlog 0: one entry) now holds that connection; the next SYN is dropped
        with _client() as c:
            started = time.monotonic()
            task = asyncio.ensure_future(connect(c, srv.getsockname()))
            await asyncio.sleep(0.2)
            assert not task.done(), "the connect did not wait for the handshake"
            first, _ = srv.accept()  # room in the queue: the retransmitted SYN is answered
            first.close()
            await asyncio.wait_for(task, 10)
            assert time.monotonic() - started >= 0.5
            second, _ = srv.accept()
            with second:
                assert c.getpeername() == second.getsockname()


def _listen(srv: socket.socket) -> str:
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    return "127.0.0.1"


async def test_the_dialer_connects_at_once_and_refused_is_a_dial_error() -> None:
    dialer = Dialer()
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        sock = await dialer.connect_tcp(Destination(Network.TCP, ipaddress.IPv4Address("127.0.0.1"), port))
        with sock, srv.accept()[0] as peer:
            assert sock.getblocking() is False
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            assert sock.getpeername() == peer.getsockname()
    with pytest.raises(DialError, match="refused"):
        await dialer.connect_tcp(Destination(Network.TCP, ipaddress.IPv4Address("127.0.0.1"), port))


async def test_the_dialer_times_out_on_a_connect_that_never_completes() -> None:
    with socket.socket() as srv, socket.create_connection((_listen(srv), srv.getsockname()[1])):
        dest = Destination(Network.TCP, ipaddress.IPv4Address("127.0.0.1"), srv.getsockname()[1])
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await Dialer().connect_tcp(dest, timeout=0.3)
        assert 0.25 <= time.monotonic() - started < 1.0  # before the SYN is sent again
