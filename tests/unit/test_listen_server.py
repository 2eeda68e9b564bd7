"""StreamServer: accepted connections are SocketStreams on sockets without Nagle delay, relayed from callbacks."""

from __future__ import annotations

import asyncio
import socket

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
