"""StreamServer: accepted connections are SocketStreams on sockets without Nagle delay, relayed from callbacks;
running out of descriptors pauses accepting and the backlog is served afterwards."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time

from tunray.net.listen import StreamServer
from tunray.net.stream import SocketStream
from tunray.policy import LevelPolicy
from tunray.relay import relay
from tunray.testing.bytestream import read_all, tcp_stream_pair


async def test_accepted_connection_is_a_nodelay_socket_stream_relayed_both_ways() -> None:
    seen: list[tuple[SocketStream, int]] = []
    policy = LevelPolicy(handshake=4, conn_idle=30, uplink_only=2, downlink_only=2)
    async with tcp_stream_pair() as (up_side, server):

        async def handler(stream: SocketStream, sock: socket.socket) -> None:
            seen.append((stream, sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))
            await relay(stream, up_side, policy)
            await stream.aclose()

        srv = StreamServer(handler)
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        await srv.listen(lsock)
        loop = asyncio.get_running_loop()
        client = socket.socket()
        client.setblocking(False)
        try:
            await loop.sock_connect(client, lsock.getsockname())
            await loop.sock_sendall(client, b"hello")
            assert await asyncio.wait_for(server.read(), 5) == b"hello"
            await server.write(b"world")
            await server.write_eof()
            assert await asyncio.wait_for(loop.sock_recv(client, 100), 5) == b"world"
            client.shutdown(socket.SHUT_WR)
            assert await asyncio.wait_for(read_all(server), 5) == b""
            assert await asyncio.wait_for(loop.sock_recv(client, 100), 5) == b""  # FIN after the bytes
            await asyncio.wait_for(asyncio.gather(*srv.tasks), 5)
        finally:
            client.close()
            await srv.aclose()
    assert len(seen) == 1
    stream, nodelay = seen[0]
    assert isinstance(stream, SocketStream)
    assert nodelay == 1, "accepted socket without TCP_NODELAY: small writes to the app wait for ACKs"


_EMFILE_CHILD = r"""
import asyncio, os, resource, socket, sys
import uvloop
from tunray.net.listen import StreamServer

async def main() -> None:
    async def echo(stream, sock):
        while data := await stream.read():
            await stream.write(data)
        await stream.aclose()

    srv = StreamServer(echo)
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    await srv.listen(lsock)
    used = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (used + 4, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    print(lsock.getsockname()[1], flush=True)
    await asyncio.sleep(8)

uvloop.run(main())
"""


def test_out_of_descriptors_pauses_accepting_and_resumes() -> None:
    """EMFILE at accept: the server logs once, waits, and serves the backlog once descriptors are free."""
    child = subprocess.Popen([sys.executable, "-c", _EMFILE_CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    clients: list[socket.socket] = []
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        for _ in range(10):  # more than the child may hold: the rest wait in its backlog
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            clients.append(c)
        time.sleep(0.3)
        for c in clients[:6]:  # the first ones end: their descriptors free up in the child
            c.sendall(b"x")
            assert c.recv(1) == b"x"
            c.close()
        for c in clients[6:]:  # accepted after the pause, served like the others
            c.sendall(b"y")
            assert c.recv(1) == b"y", "a connection from the backlog was not served after the pause"
        assert child.poll() is None, "the server process died"
    finally:
        for c in clients:
            c.close()
        child.kill()
        _, err = child.communicate()
    assert err.count("cannot accept") == 1, err[-2000:]
