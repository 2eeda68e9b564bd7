"""Interop: our ws / httpupgrade / grpc layers against sing-box's VLESS server (loopback, no TLS).

The VLESS request header is written by hand here, so these tests need no VLESS
outbound: each flow sends header + data through sing-box's ``direct`` outbound to an
echo server and checks the SHA-256 of what comes back.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
from typing import Any

import pytest
from transport_std_peers import EARLY, SERVICE, UPGRADE_PATH, WS_PATH, SingBox, vless_request
from tunray.config.model import STREAM_SCHEMA
from tunray.net.address import Destination
from tunray.net.stream import open_stream
from tunray.testing.echo import pattern
from tunray.transport import Layer
from tunray_transports.layers import GrpcTransport, HttpUpgradeTransport, WebSocketTransport

CHUNK = 64 * 1024

# case -> (sing-box inbound, streamSettings, half-close reaches the echo server?)
CASES: dict[str, tuple[str, dict[str, Any], bool]] = {
    "ws": ("ws", {"network": "ws", "wsSettings": {"path": WS_PATH}}, False),
    "ws-early-data": (
        "ws-ed",
        {"network": "websocket", "wsSettings": {"path": f"{WS_PATH}?ed={EARLY}"}},
        False,
    ),
    "httpupgrade": (
        "httpupgrade",
        {"network": "httpupgrade", "httpupgradeSettings": {"path": UPGRADE_PATH, "host": "cdn.example"}},
        True,
    ),
    "httpupgrade-0rtt": (
        "httpupgrade",
        {
            "network": "httpupgrade",
            "httpupgradeSettings": {"path": f"{UPGRADE_PATH}?ed=2048", "host": "cdn.example"},
        },
        True,
    ),
    # gRPC has no half-close (as Xray's client, see tunray_transports.grpc): no EOF expected
    "grpc": ("grpc", {"network": "grpc", "grpcSettings": {"serviceName": SERVICE}}, False),
    "grpc-multi-custom-path": (
        "grpc",
        {"network": "gun", "grpcSettings": {"serviceName": f"/{SERVICE}/Tun", "multiMode": True}},
        False,
    ),
}

LAYERS: dict[str, type[Layer]] = {
    "ws": WebSocketTransport,
    "websocket": WebSocketTransport,
    "httpupgrade": HttpUpgradeTransport,
    "grpc": GrpcTransport,
    "gun": GrpcTransport,
}


async def dial(box: SingBox, case: str) -> Any:
    inbound, raw, _ = CASES[case]
    port = box.ports[inbound]
    settings = STREAM_SCHEMA.parse(raw, "streamSettings")
    layer = LAYERS[raw["network"]](settings)
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    inner = await open_stream(sock)
    try:
        return await layer.wrap(inner, Destination.parse(f"127.0.0.1:{port}"))
    except BaseException:
        inner.abort()
        raise


async def echo_flow(stream: Any, echo_port: int, size: int, seed: int, expect_eof: bool) -> None:
    data = pattern(size, seed)

    async def writer() -> None:
        await stream.write(vless_request(echo_port) + data[:1000])
        for i in range(1000, size, CHUNK):
            await stream.write(data[i : i + CHUNK])
        await stream.write_eof()

    async def reader() -> tuple[bytes, int]:
        head = b""
        while len(head) < 2:
            chunk = await stream.read(CHUNK)
            assert chunk, "stream ended before the VLESS response header"
            head += chunk
        assert head[:2] == b"\x00\x00", head[:2]
        h = hashlib.sha256(head[2:])
        got = len(head) - 2
        while got < size:
            chunk = await stream.read(256 * 1024)
            if not chunk:
                break
            h.update(chunk)
            got += len(chunk)
        if expect_eof:
            assert await stream.read() == b""
        return h.digest(), got

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(writer())
            read = tg.create_task(reader())
        digest, got = read.result()
        assert got == size
        assert digest == hashlib.sha256(data).digest()
    finally:
        await stream.aclose()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", sorted(CASES))
async def test_bulk_10mib(case: str, sing_box: SingBox, echo_port: int) -> None:
    stream = await dial(sing_box, case)
    try:
        await echo_flow(stream, echo_port, 10 << 20, seed=7, expect_eof=CASES[case][2])
    except BaseException:
        print(sing_box.log_text()[-2000:])
        raise


@pytest.mark.parametrize("case", sorted(CASES))
async def test_concurrent_flows(case: str, sing_box: SingBox, echo_port: int) -> None:
    streams = [await dial(sing_box, case) for _ in range(6)]
    async with asyncio.TaskGroup() as tg:
        for i, s in enumerate(streams):
            tg.create_task(echo_flow(s, echo_port, 300_000 + 7919 * i, seed=i, expect_eof=CASES[case][2]))


@pytest.mark.parametrize("case", ["ws", "httpupgrade", "grpc"])
async def test_wrong_path_is_refused(case: str, sing_box: SingBox, echo_port: int) -> None:
    inbound, raw, _ = CASES[case]
    raw = {**raw}
    key = {"ws": "wsSettings", "httpupgrade": "httpupgradeSettings", "grpc": "grpcSettings"}[case]
    raw[key] = {"serviceName": "nope"} if case == "grpc" else {"path": "/nope"}
    CASES["_probe"] = (inbound, raw, True)
    try:
        with pytest.raises(ConnectionError):
            stream = await dial(sing_box, "_probe")
            try:
                await stream.write(vless_request(echo_port) + b"x")
                await asyncio.wait_for(stream.read(), 10)
            finally:
                await stream.aclose()
    finally:
        del CASES["_probe"]
