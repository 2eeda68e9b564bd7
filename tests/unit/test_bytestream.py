"""The byte-stream contract on kernel sockets: :class:`tunray.net.stream.SocketStream`."""

from __future__ import annotations

import pytest
from tunray.testing.bytestream import check_byte_stream, tcp_stream_pair


@pytest.mark.timeout(60)
async def test_socket_stream_conforms() -> None:
    await check_byte_stream(tcp_stream_pair, backpressure_limit=24 << 20)
