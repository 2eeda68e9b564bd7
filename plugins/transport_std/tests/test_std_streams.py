"""The stream adapters against scripted in-process servers on loopback.

Each server is written with the same sans-IO pieces from the server's side (or with
``h2`` in server mode), so the tests can script pings, fragments, close frames,
early data and gRPC trailers that a real server rarely produces on demand.
"""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
from tunray.bytestream import ByteStream, RecordStream, StreamReset
from tunray.config.model import STREAM_SCHEMA
from tunray.net.address import Destination
from tunray.net.stream import open_stream
from tunray_transports.grpcframe import MessageReader, encode_hunk
from tunray_transports.http1 import HandshakeError, ws_accept
from tunray_transports.layers import GrpcTransport, HttpUpgradeTransport, WebSocketTransport
from tunray_transports.wsframe import Close, Data, FrameReader, Opcode, Pong, encode_frame

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Errors(list[BaseException]):
    """Exceptions raised by the scripted server; ``done`` is set when its handler returns."""

    def __init__(self) -> None:
        super().__init__()
        self.done = asyncio.Event()

    async def check(self) -> None:
        await asyncio.wait_for(self.done.wait(), 5)
        assert not self, self


async def serve_once(handler: Handler) -> tuple[asyncio.Server, int, Errors]:
    errors = Errors()

    async def wrapped(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await handler(r, w)
        except BaseException as exc:  # reported by the test
            errors.append(exc)
        finally:
            w.close()
            errors.done.set()

    server = await asyncio.start_server(wrapped, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], errors


async def connect(layer: Any, port: int, host: str = "127.0.0.1") -> Any:
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    inner = await open_stream(sock)
    try:
        return await layer.wrap(inner, Destination.parse(f"{host}:{port}"))
    except BaseException:
        inner.abort()  # as tunray.transport.Dialable does
        raise


def stream_settings(raw: dict[str, Any]) -> Any:
    return STREAM_SCHEMA.parse(raw, "streamSettings")


async def read_request(r: asyncio.StreamReader) -> tuple[str, dict[str, str]]:
    head = (await r.readuntil(b"\r\n\r\n")).decode()
    lines = head.split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    return lines[0], headers


def accept_reply(headers: dict[str, str], extra: str = "") -> bytes:
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {ws_accept(headers['sec-websocket-key'])}\r\n{extra}\r\n"
    ).encode()


async def read_client_events(r: asyncio.StreamReader, reader: FrameReader, until: type) -> list[Any]:
    events: list[Any] = []
    while not any(isinstance(e, until) for e in events):
        data = await r.read(65536)
        assert data, "client closed early"
        events += reader.feed(data)
    return events


async def test_ws_handshake_ping_fragments_and_close() -> None:
    seen: dict[str, Any] = {}

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        seen["line"], seen["headers"] = await read_request(r)
        # The 101 and the first frames arrive in one segment: the leftover must be kept.
        w.write(
            accept_reply(seen["headers"])
            + encode_frame(Opcode.BINARY, b"Hel", None, fin=False)
            + encode_frame(Opcode.PING, b"are you there", None)
            + encode_frame(Opcode.CONTINUATION, b"lo", None)
        )
        reader = FrameReader(accept_masked=True)
        events = await read_client_events(r, reader, Data)
        events += (
            await read_client_events(r, reader, Close)
            if not any(isinstance(e, Close) for e in events)
            else []
        )
        seen["events"] = events
        w.write(encode_frame(Opcode.CLOSE, b"\x03\xe8", None))
        await w.drain()

    server, port, errors = await serve_once(handler)
    async with server:
        layer = WebSocketTransport(
            stream_settings({"network": "ws", "wsSettings": {"path": "ray", "headers": {"X-Test": "1"}}})
        )
        stream = await connect(layer, port, "10.1.2.3")
        got = b""
        while len(got) < 5:
            got += await stream.read()
        assert got == b"Hello"
        await stream.write(b"reply")
        await stream.aclose()  # sends Close 1000
        await asyncio.sleep(0.05)
    await errors.check()
    assert seen["line"] == "GET /ray HTTP/1.1"
    h = seen["headers"]
    assert h["host"] == "10.1.2.3" and h["upgrade"] == "websocket" and h["sec-websocket-version"] == "13"
    assert h["x-test"] == "1" and "user-agent" in h and "sec-websocket-protocol" not in h
    ev = seen["events"]
    assert Pong(b"are you there") in ev
    assert b"".join(e.payload for e in ev if isinstance(e, Data)) == b"reply"
    assert Close(1000, "") in ev


async def test_ws_server_close_ends_reads_and_is_answered() -> None:
    replies: list[Any] = []

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        _, headers = await read_request(r)
        w.write(accept_reply(headers) + encode_frame(Opcode.BINARY, b"bye", None))
        w.write(encode_frame(Opcode.CLOSE, b"\x03\xe9going", None))
        replies.extend(await read_client_events(r, FrameReader(accept_masked=True), Close))

    server, port, errors = await serve_once(handler)
    async with server:
        stream = await connect(WebSocketTransport(stream_settings({"network": "ws"})), port)
        assert await stream.read() == b"bye"
        assert await stream.read() == b""
        assert await stream.read() == b""
        with pytest.raises(ConnectionError):
            await stream.write(b"late")
        await stream.aclose()
    await errors.check()
    assert replies == [Close(1001, "")]


async def test_ws_early_data_goes_in_the_protocol_header() -> None:
    seen: dict[str, Any] = {}

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        seen["line"], seen["headers"] = await read_request(r)
        proto = seen["headers"]["sec-websocket-protocol"]
        w.write(accept_reply(seen["headers"], f"Sec-WebSocket-Protocol: {proto}\r\n"))
        events = await read_client_events(r, FrameReader(accept_masked=True), Data)
        w.write(encode_frame(Opcode.BINARY, b"".join(e.payload for e in events if isinstance(e, Data)), None))
        await w.drain()

    server, port, errors = await serve_once(handler)
    async with server:
        layer = WebSocketTransport(
            stream_settings({"network": "ws", "wsSettings": {"path": "/ray?ed=16&x=1"}})
        )
        stream = await connect(layer, port)  # no handshake yet: it waits for the first write
        reader = asyncio.create_task(stream.read())
        await asyncio.sleep(0.01)
        assert not reader.done() and "line" not in seen
        await stream.write(b"0123456789abcdef" + b"XYZ")
        assert await reader == b"XYZ"
        await stream.aclose()
    await errors.check()
    assert seen["line"] == "GET /ray?x=1 HTTP/1.1"
    proto = seen["headers"]["sec-websocket-protocol"]
    assert "=" not in proto
    assert base64.urlsafe_b64decode(proto + "=" * (-len(proto) % 4)) == b"0123456789abcdef"


async def test_ws_bad_accept_fails_the_handshake() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(
            b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n"
        )
        await w.drain()

    server, port, _ = await serve_once(handler)
    async with server:
        with pytest.raises(HandshakeError):
            await connect(WebSocketTransport(stream_settings({"network": "ws"})), port)


async def test_httpupgrade_0rtt_pipelines_data_before_the_101() -> None:
    seen: dict[str, Any] = {}

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        seen["line"], seen["headers"] = await read_request(r)
        seen["early"] = await r.readexactly(5)  # read before we answer: 0-RTT
        w.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nraw-")
        w.write(seen["early"].upper())
        await w.drain()
        seen["tail"] = await r.read()  # until the client's half-close
        w.write(b"!")
        await w.drain()

    server, port, errors = await serve_once(handler)
    async with server:
        settings = {"network": "httpupgrade", "httpupgradeSettings": {"path": "/u?ed=1", "host": "h.example"}}
        stream = await connect(HttpUpgradeTransport(stream_settings(settings)), port)
        await stream.write(b"hello")
        got = b""
        while len(got) < 9:
            got += await stream.read()
        assert got == b"raw-HELLO"
        await stream.write(b"more")
        await stream.write_eof()
        assert await stream.read() == b"!"
        assert await stream.read() == b""
        await stream.aclose()
    await errors.check()
    assert seen["line"] == "GET /u HTTP/1.1" and seen["headers"]["host"] == "h.example"
    assert "sec-websocket-key" not in seen["headers"]
    assert seen["tail"] == b"more"


# gRPC against h2 in server mode -------------------------------------------------------


def grpc_server(trailer_status: str, seen: dict[str, Any], *, end: bool = True, rst: int | None = None) -> Handler:
    """Answers the first 6 payload bytes reversed; then trailers + END_STREAM (if *end*), then RST_STREAM *rst*."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        conn.initiate_connection()
        w.write(conn.data_to_send())
        messages = MessageReader()
        body = b""
        done = False
        while not done:
            data = await r.read(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    seen["headers"] = dict(ev.headers)
                    conn.send_headers(
                        ev.stream_id, [(":status", "200"), ("content-type", "application/grpc")]
                    )
                elif isinstance(ev, h2.events.DataReceived):
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    body += b"".join(messages.feed(ev.data))
                    if len(body) >= 6 and not done:
                        seen["body"] = body
                        conn.send_data(ev.stream_id, encode_hunk(body[::-1]))
                        if end:
                            conn.send_headers(ev.stream_id, [("grpc-status", trailer_status)], end_stream=True)
                        if rst is not None:
                            conn.reset_stream(ev.stream_id, rst)
                        done = True
            w.write(conn.data_to_send())
            await w.drain()
        seen["client_ended"] = await r.read(65536)  # waits for the client to close

    return handler


@pytest.mark.parametrize(
    ("status", "end", "rst", "outcome"),
    [
        ("0", True, None, "eof"),
        ("14", True, None, "reset"),
        ("0", True, 0, "eof"),  # END_STREAM then RST_STREAM NO_ERROR: grpc-go's orderly end
        ("0", True, 8, "reset"),  # RST_STREAM CANCEL
        ("0", False, 0, "reset"),  # NO_ERROR before the server finished
    ],
    ids=["trailers-ok", "status-14", "end-then-rst-no-error", "rst-cancel", "rst-before-end"],
)
async def test_grpc_request_shape_and_how_the_server_ends(status: str, end: bool, rst: int | None, outcome: str) -> None:
    seen: dict[str, Any] = {}
    server, port, errors = await serve_once(grpc_server(status, seen, end=end, rst=rst))
    async with server:
        settings = {
            "network": "grpc",
            "grpcSettings": {"serviceName": "my svc", "authority": "a.example", "user_agent": "ua/1"},
        }
        stream = await connect(GrpcTransport(stream_settings(settings)), port)
        await stream.write(b"abc")
        await stream.write(b"def")
        await stream.write_eof()  # no half-close over gRPC: nothing is sent
        assert await stream.read() == b"fedcba"
        if outcome == "eof":
            assert await stream.read() == b""
            assert await stream.read() == b""
        else:
            with pytest.raises(StreamReset):
                await stream.read()
        await stream.aclose()
    await errors.check()
    h = seen["headers"]
    assert h[":method"] == "POST" and h[":path"] == "/my%20svc/Tun" and h[":authority"] == "a.example"
    assert h["content-type"] == "application/grpc" and h["te"] == "trailers" and h["user-agent"] == "ua/1"
    assert seen["body"] == b"abcdef"


class FakeTls(RecordStream):
    """An inner record stream that reports a negotiated ALPN and records writes."""

    def __init__(self, alpn: str) -> None:
        self._alpn = alpn
        self.written: list[bytes] = []

    @property
    def alpn(self) -> str:
        return self._alpn

    @property
    def tls_version(self) -> str:
        return "TLSv1.3"

    @property
    def inner(self) -> ByteStream:
        raise AssertionError("not used")

    async def read_record(self, max_bytes: int = 65536) -> bytes:
        raise AssertionError("nothing may be read before the ALPN check")

    async def read(self, max_bytes: int = 65536) -> bytes:
        raise AssertionError("nothing may be read before the ALPN check")

    def detach_raw(self) -> tuple[bytes, bytes, ByteStream]:
        raise AssertionError("not used")

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    async def write_eof(self) -> None:
        pass

    def abort(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize(("network", "alpn"), [("ws", "h2"), ("httpupgrade", "h2"), ("grpc", "http/1.1")])
async def test_wrong_alpn_below_is_reported_before_any_byte(network: str, alpn: str) -> None:
    layers: dict[str, Callable[[Any], Any]] = {
        "ws": WebSocketTransport,
        "httpupgrade": HttpUpgradeTransport,
        "grpc": GrpcTransport,
    }
    layer = layers[network](stream_settings({"network": network}))
    inner = FakeTls(alpn)
    with pytest.raises(HandshakeError, match=r"tlsSettings\.alpn"):
        await layer.wrap(inner, Destination.parse("192.0.2.1:443"))
    assert inner.written == []
