"""XHTTP's three modes against a scripted HTTP/2 server on loopback (and stream-one on HTTP/1.1).

The pinned Xray (24.11.21) predates ``stream-one``, so that mode is checked here, with
the other two, against a small XHTTP echo server written on ``h2``'s server side: it
asserts each request's method, path shape, ``Referer`` padding, ``Content-Type`` and
packet-up's sequence numbers and size limit, and echoes the uplink back on the downlink.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
from tunray.net.stream import open_stream
from tunray_transports.xhttp import open_xhttp
from tunray_transports.xhttpframe import Range, XhttpOptions

MAX_POST = 3000


@dataclass
class Seen:
    requests: list[dict[bytes, bytes]] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class XhttpEchoServer:
    """One HTTP/2 connection: sessions keyed by id; downlink = the uplink echoed."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Seen) -> None:
        self.reader, self.writer, self.seen = reader, writer, seen
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.headers: dict[int, dict[bytes, bytes]] = {}
        self.down: dict[str, int] = {}  # session -> GET stream id
        self.packets: dict[str, dict[int, bytes]] = {}
        self.next_seq: dict[str, int] = {}
        self.pending: dict[str, bytearray] = {}
        self.stream_up: dict[int, str] = {}

    def _check(self, h: dict[bytes, bytes]) -> None:
        referer = h.get(b"referer", b"").decode()
        padding = referer.partition("?x_padding=")[2]
        if not referer.startswith("https://xhttp.test/xh/?x_padding=") or not 100 <= len(padding) <= 1000 or set(padding) != {"X"}:
            self.seen.problems.append(f"bad referer {referer[:60]!r}")
        if h.get(b":authority") != b"xhttp.test":
            self.seen.problems.append("bad authority")

    def _send_down(self, session: str, data: bytes) -> None:
        sid = self.down.get(session)
        if sid is None:
            self.pending.setdefault(session, bytearray()).extend(data)
            return
        self.conn.send_data(sid, data)

    def _on_headers(self, sid: int, headers: list[tuple[bytes, bytes]]) -> None:
        h = dict(headers)
        self.headers[sid] = h
        self.seen.requests.append(h)
        self._check(h)
        path = h[b":path"].decode().partition("?")[0]
        parts = path[len("/xh/") :].split("/") if path.startswith("/xh/") else None
        if parts is None:
            self.conn.send_headers(sid, [(b":status", b"404")], end_stream=True)
            return
        if h[b":method"] == b"GET" and len(parts) == 1 and parts[0]:
            self.down[parts[0]] = sid
            self.conn.send_headers(sid, [(b":status", b"200")])
            if parts[0] in self.pending:
                self.conn.send_data(sid, bytes(self.pending.pop(parts[0])))
        elif h[b":method"] == b"POST" and parts == [""]:  # stream-one: echo on the same stream
            if h.get(b"content-type") != b"application/grpc":
                self.seen.problems.append("stream-one without grpc content-type")
            self.conn.send_headers(sid, [(b":status", b"200")])
        elif h[b":method"] == b"POST" and len(parts) == 1:  # stream-up
            if h.get(b"content-type") != b"application/grpc":
                self.seen.problems.append("stream-up without grpc content-type")
            self.stream_up[sid] = parts[0]
            self.conn.send_headers(sid, [(b":status", b"200")])
            self.conn.send_data(sid, b"X" * 300)  # keep-alive padding the client must ignore
        elif h[b":method"] == b"POST" and len(parts) == 2:  # packet-up
            self.seen.seqs.append(int(parts[1]))
        else:
            self.conn.send_headers(sid, [(b":status", b"400")], end_stream=True)

    def _on_data(self, sid: int, data: bytes) -> None:
        h = self.headers[sid]
        path = h[b":path"].decode().partition("?")[0]
        parts = path[len("/xh/") :].split("/")
        if parts == [""]:
            self.conn.send_data(sid, data)
        elif sid in self.stream_up:
            self._send_down(self.stream_up[sid], data)
        else:
            session, seq = parts[0], int(parts[1])
            self.packets.setdefault(session, {}).setdefault(seq, b"")
            self.packets[session][seq] += data

    def _on_end(self, sid: int) -> None:
        h = self.headers[sid]
        path = h[b":path"].decode().partition("?")[0]
        parts = path[len("/xh/") :].split("/")
        if h[b":method"] == b"POST" and len(parts) == 2:
            session, seq = parts[0], int(parts[1])
            body = self.packets[session].get(seq, b"")
            if len(body) > MAX_POST or int(h.get(b"content-length", b"-1")) != len(body):
                self.seen.problems.append(f"packet {seq}: {len(body)} bytes, content-length {h.get(b'content-length')!r}")
            self.conn.send_headers(sid, [(b":status", b"200")], end_stream=True)
            nxt = self.next_seq.get(session, 0)
            while nxt in self.packets[session]:
                self._send_down(session, self.packets[session].pop(nxt))
                nxt += 1
            self.next_seq[session] = nxt
        elif parts == [""] or sid in self.stream_up:
            session = self.stream_up.get(sid)
            down = sid if session is None else self.down.get(session)
            if down is not None:
                self.conn.end_stream(down)  # the uplink ended: end the echo too

    async def run(self) -> None:
        self.conn.initiate_connection()
        self.writer.write(self.conn.data_to_send())
        while data := await self.reader.read(65536):
            for ev in self.conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    self._on_headers(ev.stream_id, list(ev.headers))
                elif isinstance(ev, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    self._on_data(ev.stream_id, ev.data)
                elif isinstance(ev, h2.events.StreamEnded):
                    self._on_end(ev.stream_id)
            self.writer.write(self.conn.data_to_send())
            await self.writer.drain()
        self.writer.close()


@asynccontextmanager
async def serve() -> AsyncIterator[tuple[int, Seen]]:
    seen = Seen()
    tasks: set[asyncio.Task[None]] = set()
    writers: list[asyncio.StreamWriter] = []

    def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        writers.append(w)
        task = asyncio.get_running_loop().create_task(XhttpEchoServer(r, w, seen).run())
        tasks.add(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], seen
    finally:
        server.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for w in writers:
            w.close()
        await server.wait_closed()


async def _connect(port: int) -> Any:
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await open_stream(sock)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", ["stream-one", "stream-up", "packet-up"])
async def test_mode_carries_bytes_both_ways(mode: str) -> None:
    opts = XhttpOptions(
        path="/xh/", query="", host="xhttp.test", headers=(("User-Agent", "t"),), mode=mode,
        max_post=Range(1000, MAX_POST), min_interval_ms=Range(0, 2),
    )  # fmt: skip
    payload = random.Random(5).randbytes(300_000)
    async with serve() as (port, seen):
        stream = await open_xhttp(await _connect(port), opts, mode, "xhttp.test")

        async def upload() -> None:
            for i in range(0, len(payload), 7000):
                await stream.write(payload[i : i + 7000])

        async def download() -> bytes:
            got = bytearray()
            while len(got) < len(payload):
                chunk = await stream.read(65536)
                assert chunk, f"ended after {len(got)}"
                got += chunk
            return bytes(got)

        _, got = await asyncio.wait_for(asyncio.gather(upload(), download()), 20)
        assert got == payload
        if mode != "packet-up":
            await stream.write_eof()
            assert await asyncio.wait_for(stream.read(), 5) == b""  # the server's clean end
        await stream.aclose()
    assert not seen.problems, seen.problems
    methods = sorted(h[b":method"].decode() for h in seen.requests)
    if mode == "stream-one":
        assert methods == ["POST"]
    elif mode == "stream-up":
        assert methods == ["GET", "POST"]
    else:
        assert methods[0] == "GET" and len(methods) > len(payload) // MAX_POST
        assert sorted(seen.seqs) == list(range(len(seen.seqs)))


async def _h11_stream_one_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Seen) -> None:
    """HTTP/1.1 stream-one: echo the chunked POST body into a chunked 200 response, as it arrives."""
    import h11

    conn = h11.Connection(h11.SERVER)
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            conn.receive_data(data)
            if not data:
                break
            continue
        if isinstance(event, h11.Request):
            h = {k: v for k, v in event.headers}
            seen.requests.append({b":method": event.method, b":path": event.target, **h})
            if event.method != b"POST" or event.target != b"/xh/" or h.get(b"transfer-encoding") != b"chunked":
                seen.problems.append(f"unexpected request {event.method!r} {event.target!r}")
            if h.get(b"content-type") != b"application/grpc" or h.get(b"host") != b"xhttp.test":
                seen.problems.append("missing content-type or host")
            writer.write(conn.send(h11.Response(status_code=200, headers=[(b"transfer-encoding", b"chunked")])) or b"")
        elif isinstance(event, h11.Data):
            writer.write(conn.send(h11.Data(data=event.data)) or b"")
        elif isinstance(event, h11.EndOfMessage):
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
            break
        await writer.drain()
    writer.close()


@pytest.mark.timeout(30)
async def test_stream_one_over_http11() -> None:
    from tunray_transports.xhttp1 import open_xhttp1

    seen = Seen()
    tasks: list[asyncio.Task[None]] = []

    def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        tasks.append(asyncio.get_running_loop().create_task(_h11_stream_one_server(r, w, seen)))

    async def no_redial() -> Any:
        raise AssertionError("stream-one must not open a second connection")

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        opts = XhttpOptions(path="/xh/", query="", host="xhttp.test", headers=(), mode="stream-one", http1=True)
        stream = await open_xhttp1(await _connect(server.sockets[0].getsockname()[1]), opts, "stream-one", "xhttp.test", no_redial)
        payload = random.Random(9).randbytes(200_000)

        async def upload() -> None:
            for i in range(0, len(payload), 5000):
                await stream.write(payload[i : i + 5000])
            await stream.write_eof()

        async def download() -> bytes:
            got = bytearray()
            while chunk := await stream.read(65536):
                got += chunk
            return bytes(got)

        _, got = await asyncio.wait_for(asyncio.gather(upload(), download()), 20)
        assert got == payload  # and b"" at the chunked response's end: a clean end
        await stream.aclose()
    finally:
        server.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
    assert not seen.problems, seen.problems
    assert len(seen.requests) == 1
