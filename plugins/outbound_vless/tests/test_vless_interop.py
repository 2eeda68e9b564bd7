"""The ``vless`` outbound against real servers: sing-box and v2ray 4.34 on loopback, Xray-core in a namespace.

The matrix runs over every server configuration in :data:`vless_servers.MATRIX`
(raw, TLS, Vision, WebSocket+TLS, HTTPUpgrade, gRPC+TLS on sing-box and on Xray; raw
and WebSocket+TLS on v2ray): 20 MiB each way at once, a 20 MiB download the server
ends and a 20 MiB upload answered after it (every byte, then a FIN, never a reset),
a reset of the VLESS connection (a RST for the app, never a FIN), 100 concurrent flows
plus an IPv6 and a server-resolved domain destination, UDP over XUDP.  The plain UDP framing
(ports 53/443) runs over the same table in ``test_vless_netns.py``.  Flows are opened
with the driver inbound through a whole runtime; the servers' direct/freedom outbound
reaches a :mod:`tunray.testing.echo` server on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger
from tunray.net.address import Destination, Network, parse_host
from tunray.testing.certs import SelfSigned, make_cert
from tunray.testing.conformance import check_outbound
from tunray.testing.echo import RESET_OFFSET, RESET_PREFIX, pattern
from tunray.testing.harness import driver_of, running
from tunray.testing.links import AppEnd
from vless_servers import MATRIX, ResettingRelay, RunningServer, free_port, serve, vless_outbound

POLICY = {"levels": {"0": {"handshake": 2, "connIdle": 30, "uplinkOnly": 2, "downlinkOnly": 2}}}


def _config(outbound: dict[str, Any]) -> dict[str, Any]:
    return {
        "log": {"loglevel": "none", "access": "none"},
        "inbounds": [{"protocol": "driver"}],
        "outbounds": [dict(outbound, tag="vless")],
        "policy": POLICY,
    }


def _tcp(host: str, port: int) -> Destination:
    return Destination(Network.TCP, parse_host(host), port)


async def _echo_bulk(drv: Any, target: Destination, size: int, source_port: int, block: int = 1 << 18) -> None:
    app, task = drv.open_tcp(f"10.0.0.2:{source_port}", target)
    payload = os.urandom(size)

    async def send() -> None:
        for i in range(0, size, block):
            await app.send(payload[i : i + block])
        app.shutdown_write()

    sender = asyncio.create_task(send())
    digest = hashlib.sha256()
    received = 0
    try:
        while chunk := await app.recv(1 << 20):
            digest.update(chunk)
            received += len(chunk)
    finally:
        await sender
        await task
    assert received == size, f"echo returned {received} of {size} bytes"
    assert digest.digest() == hashlib.sha256(payload).digest(), "echoed bytes differ"


BULK = 20 << 20


async def _download(drv: Any, echo_port: int, size: int) -> None:
    """The source server sends *size* bytes then closes: all of them, then a FIN, no reset."""
    app, task = drv.open_tcp("10.0.0.2:40010", _tcp("127.0.0.1", echo_port + 1))
    await app.send(size.to_bytes(8, "big"))
    digest, received = hashlib.sha256(), 0
    while chunk := await app.recv(1 << 20):
        digest.update(chunk)
        received += len(chunk)
    assert received == size, f"downloaded {received} of {size} bytes"
    block = pattern(1 << 20)  # the source repeats one 1 MiB block
    expected = (block * (size // len(block) + 1))[:size]
    assert digest.digest() == hashlib.sha256(expected).digest(), "downloaded bytes differ"
    assert app.got_fin and not app.reset, "the server's clean end did not reach the app as a FIN"
    app.shutdown_write()
    await asyncio.wait_for(task, 5)
    assert not app.reset, "the flow was reset after the app's own half-close"


async def _upload(drv: Any, echo_port: int, size: int) -> None:
    """Send *size* bytes to the counted sink and wait for its SHA-256 reply, then a FIN, no reset."""
    app, task = drv.open_tcp("10.0.0.2:40011", _tcp("127.0.0.1", echo_port + 5))
    payload = os.urandom(size)
    await app.send(size.to_bytes(8, "big"))
    for i in range(0, size, 1 << 18):
        await app.send(payload[i : i + (1 << 18)])
    reply = await asyncio.wait_for(app.recv_all(), 30)
    assert reply == hashlib.sha256(payload).digest(), f"sink replied {reply.hex()}"
    assert app.got_fin and not app.reset, "the server's clean end did not reach the app as a FIN"
    app.shutdown_write()
    await asyncio.wait_for(task, 5)
    assert not app.reset


@pytest.mark.parametrize("kind", list(MATRIX))
@pytest.mark.timeout(120)
async def test_bulk_20_mib_each_way_download_and_upload(kind: str, tmp_path: Path, echo_port: int) -> None:
    with serve(kind, tmp_path, echo_port) as (_srv, ob, _cert):
        async with running(_config(ob)) as rt:
            drv = driver_of(rt)
            await _echo_bulk(drv, _tcp("127.0.0.1", echo_port), BULK, 40000)
            await _download(drv, echo_port, BULK)
            await _upload(drv, echo_port, BULK)


@pytest.mark.parametrize("kind", list(MATRIX))
@pytest.mark.timeout(60)
async def test_reset_of_the_server_connection_is_a_reset_for_the_app(
    kind: str, tmp_path: Path, echo_port: int
) -> None:
    """A RST on the VLESS connection mid-download reaches the app as a RST at once, never as a FIN."""
    with serve(kind, tmp_path, echo_port) as (srv, ob, _cert):
        async with ResettingRelay(srv.host, srv.port) as relay:
            ob["settings"].update(address="127.0.0.1", port=relay.listen_port)
            async with running(_config(ob)) as rt:
                app, task = driver_of(rt).open_tcp("10.0.0.2:40012", _tcp("127.0.0.1", echo_port + 1))
                await app.send((1 << 30).to_bytes(8, "big"))
                received = 0
                while received < 1 << 20:
                    chunk = await asyncio.wait_for(app.recv(1 << 20), 10)
                    assert chunk, "EOF before the reset"
                    received += len(chunk)
                assert relay.reset() == 1
                started = time.monotonic()
                while chunk := await asyncio.wait_for(app.recv(1 << 20), 5):
                    received += len(chunk)
                await asyncio.wait_for(task, 5)
                took = time.monotonic() - started
    assert app.reset, "the reset reached the app as a clean end"
    assert not app.got_fin, "the app saw a FIN before the reset"
    assert received < 1 << 30
    assert took < 1.0, f"the reset took {took:.2f} s to reach the app"


@pytest.mark.parametrize("kind", list(MATRIX))
async def test_target_reset_ends_the_flow_as_the_server_ends_it(kind: str, tmp_path: Path, echo_port: int) -> None:
    """The target sends 16 bytes then resets.  A VLESS server closes its client connection
    cleanly when the target resets (Xray: ``conn.Close()`` once the copy fails; sing-box and
    v2ray alike; the protocol has no way to say "reset"), so the app gets exactly the 16
    bytes and then a FIN, at once (not after ``uplinkOnly``)."""
    with serve(kind, tmp_path, echo_port) as (_srv, ob, _cert):
        async with running(_config(ob)) as rt:
            started = time.monotonic()
            app, task = driver_of(rt).open_tcp("10.0.0.2:40013", _tcp("127.0.0.1", echo_port + RESET_OFFSET))
            got = await asyncio.wait_for(app.recv_all(), 5)
            took = time.monotonic() - started
            assert got == RESET_PREFIX
            assert app.got_fin and not app.reset, (app.got_fin, app.reset)
            assert took < 1.5, f"the end reached the app after {took:.2f} s"
            app.shutdown_write()
            await asyncio.wait_for(task, 5)
            assert not app.reset


@pytest.mark.parametrize("kind", list(MATRIX))
async def test_100_concurrent_flows_ipv6_and_domain(kind: str, tmp_path: Path, echo_port: int) -> None:
    with serve(kind, tmp_path, echo_port) as (_srv, ob, _cert):
        async with running(_config(ob)) as rt:
            drv = driver_of(rt)
            # at once: over WebSocket each flow ends by the downlinkOnly timer (no half-close)
            await asyncio.gather(
                *(_echo_bulk(drv, _tcp("127.0.0.1", echo_port), 32 * 1024, 41000 + i) for i in range(100)),
                _echo_bulk(drv, _tcp("::1", echo_port), 1 << 20, 42000),  # an IPv6 destination
                _echo_bulk(drv, _tcp("localhost", echo_port), 1 << 20, 42001),  # resolved by the server
            )


@pytest.mark.parametrize("kind", ["sing-box-raw", "sing-box-tls", "sing-box-httpupgrade", "sing-box-grpc-tls"])
@pytest.mark.timeout(90)
async def test_check_outbound_conformance(kind: str, tmp_path: Path, echo_port: int) -> None:
    """The published outbound suite; the target dial happens at the server (``remote_dial``)."""
    with serve(kind, tmp_path) as (_srv, ob, _cert):
        await check_outbound(ob, "127.0.0.1", port=echo_port, remote_dial=True)


@pytest.mark.parametrize("kind", list(MATRIX))
async def test_udp_xudp_echo_and_full_cone(kind: str, tmp_path: Path, echo_port: int) -> None:
    """Ports other than 53/443 go over XUDP: per-packet addresses and replies from any source."""
    with serve(kind, tmp_path, echo_port) as (_srv, ob, _cert):
        async with running(_config(ob)) as rt:
            drv = driver_of(rt)
            target = Destination(Network.UDP, parse_host("127.0.0.1"), echo_port)
            app, task = drv.open_udp("10.0.0.2:5353", target)
            app.send(b"ping-1", target)
            reply = await asyncio.wait_for(app.recv(), 5)
            assert reply.data == b"ping-1" and reply.peer == target
            for i in range(20):
                app.send(b"x%d" % i, target)
            got = {(await asyncio.wait_for(app.recv(), 5)).data for _ in range(20)}
            assert got == {b"x%d" % i for i in range(20)}
            if MATRIX[kind].xudp_cone:
                # v2ray 4.34 predates XUDP's per-packet addresses: one destination per flow
                probe = target.with_port(echo_port + 1)
                app.send(b"cone", probe)
                sources = set()
                for _ in range(2):
                    r = await asyncio.wait_for(app.recv(), 5)
                    assert r.data == b"cone"
                    sources.add(r.peer)
                assert sources == {probe, probe.with_port(echo_port + 3)}, sources
            app.close()
            await asyncio.wait_for(task, 5)


async def test_vision_refuses_udp_443_without_the_udp443_flow(tmp_path: Path) -> None:
    with serve("sing-box-vision", tmp_path) as (_srv, ob, _cert):
        async with running(_config(ob)) as rt:
            target = Destination(Network.UDP, parse_host("127.0.0.1"), 443)
            app, task = driver_of(rt).open_udp("10.0.0.2:5353", target)
            app.send(b"quic?", target)
            await asyncio.wait_for(task, 3)
            assert app.closed


# --- Vision with real inner TLS 1.3: the server switches its downlink to raw TCP ---------


class _AppTls:
    """The app's own TLS client over the driver's app end (so Vision sees inner TLS 1.3)."""

    def __init__(self, app: AppEnd, ctx: ssl.SSLContext) -> None:
        self.app = app
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="vless.test")

    async def _pump(self) -> None:
        if self.outgoing.pending:
            await self.app.send(self.outgoing.read())
        data = await self.app.recv(1 << 18)
        if not data:
            raise ConnectionError("closed")
        self.incoming.write(data)

    async def handshake(self) -> None:
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._pump()
        if self.outgoing.pending:
            await self.app.send(self.outgoing.read())

    async def send(self, data: bytes) -> None:
        self.obj.write(data)
        await self.app.send(self.outgoing.read())

    async def recv(self) -> bytes:
        while True:
            try:
                return self.obj.read(1 << 18)
            except ssl.SSLWantReadError:
                await self._pump()


@contextlib.asynccontextmanager
async def _tls_echo_server(cert: SelfSigned) -> AsyncIterator[int]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert.cert_file, cert.key_file)
    handlers: set[asyncio.Task[Any]] = set()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    port = free_port()
    server = await asyncio.start_server(echo, "127.0.0.1", port, ssl=ctx)
    try:
        yield port
    finally:
        server.close()
        await server.wait_closed()
        for t in handlers:
            t.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


@pytest.mark.parametrize("block", [1 << 16, 3 << 20])
async def test_vision_direct_switch_with_inner_tls13(tmp_path: Path, block: int) -> None:
    messages: list[str] = []
    sink = logger.add(messages.append, level="DEBUG", format="{message}")
    try:
        with serve("sing-box-vision", tmp_path) as (_srv, ob, cert):
            async with _tls_echo_server(cert) as tls_port, running(_config(ob)) as rt:
                app, task = driver_of(rt).open_tcp("10.0.0.2:40100", _tcp("127.0.0.1", tls_port))
                client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                client_ctx.load_verify_locations(cert.cert_file)
                inner = _AppTls(app, client_ctx)
                await inner.handshake()
                assert inner.obj.version() == "TLSv1.3"
                payload = os.urandom(3 << 20)
                got = bytearray()

                async def reader() -> None:
                    while len(got) < len(payload):
                        got.extend(await inner.recv())

                r = asyncio.create_task(reader())
                try:
                    for i in range(0, len(payload), block):
                        await inner.send(payload[i : i + block])
                finally:
                    await asyncio.wait_for(r, 20)
                assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
                app.shutdown_write()
                await asyncio.wait_for(task, 10)
    finally:
        logger.remove(sink)
    assert any("vision downlink switched to the raw socket" in m for m in messages), "the server never switched"


# --- faults -------------------------------------------------------------------------------


async def test_wrong_uuid_resets_the_flow_promptly(tmp_path: Path, echo_port: int) -> None:
    """The server closes without a response header: the flow is reset (ServerClosed), not ended."""
    with serve("sing-box-raw", tmp_path) as (srv, _ob, _cert):
        ob = vless_outbound(srv, user_id="00000000-0000-4000-8000-000000000001")
        async with running(_config(ob)) as rt:
            app, task = driver_of(rt).open_tcp("10.0.0.2:40200", _tcp("127.0.0.1", echo_port))
            started = time.monotonic()
            await app.send(b"hello")
            await asyncio.wait_for(task, 3)
            assert app.reset and not app.got_fin
            assert time.monotonic() - started < 1.5


async def test_wrong_certificate_is_refused_with_a_clear_log_line(tmp_path: Path, echo_port: int) -> None:
    messages: list[str] = []
    sink = logger.add(messages.append, level="WARNING", format="{message}")
    try:
        with serve("sing-box-tls", tmp_path) as (srv, _ob, _cert):
            other = make_cert(tmp_path, stem="other")
            ob = vless_outbound(srv, tls=other)  # trusts a different self-signed cert
            async with running(_config(ob)) as rt:
                app, task = driver_of(rt).open_tcp("10.0.0.2:40300", _tcp("127.0.0.1", echo_port))
                await asyncio.wait_for(task, 3)
                assert app.reset and not app.accepted
    finally:
        logger.remove(sink)
    assert any(("certificate refused" in m and "certificate verify failed" in m) or "self-signed" in m for m in messages), messages


async def test_server_killed_mid_transfer(tmp_path: Path, echo_port: int) -> None:
    """A killed server's kernel ends the connection with a FIN (TLS without close_notify, as Go
    peers end it, is a clean end): every byte the server sent, then a FIN at once, no reset.
    (A RST of the connection is a reset: test_reset_of_the_server_connection_is_a_reset_for_the_app.)"""
    with serve("sing-box-tls", tmp_path) as (srv, ob, _cert):
        async with running(_config(ob)) as rt:
            app, task = driver_of(rt).open_tcp("10.0.0.2:40400", _tcp("127.0.0.1", echo_port))
            await app.send(b"x" * 100_000)
            assert len(await app.recv_exactly(100_000)) == 100_000
            srv.stop()
            started = time.monotonic()
            assert await asyncio.wait_for(app.recv(), 5) == b""
            assert time.monotonic() - started < 1.0
            assert app.got_fin and not app.reset
            app.shutdown_write()
            await asyncio.wait_for(task, 5)
            assert not app.reset


async def test_server_unreachable_fails_within_the_handshake_timeout(tmp_path: Path, echo_port: int) -> None:
    cert = make_cert(tmp_path)
    # A refused port: the dial fails at once.
    dead = RunningServer(proc=None, host="127.0.0.1", port=free_port(), config=tmp_path, log=tmp_path)  # type: ignore[arg-type]
    # A listener that never accepts nor speaks: the kernel completes the TCP handshake,
    # the TLS handshake times out (policy handshake = 2 s).
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    silent_port = silent.getsockname()[1]
    try:
        for ob, limit in (
            (vless_outbound(dead), 1.0),
            (vless_outbound(RunningServer(None, "127.0.0.1", silent_port, tmp_path, tmp_path), tls=cert), 3.0),  # type: ignore[arg-type]
        ):
            async with running(_config(ob)) as rt:
                started = time.monotonic()
                app, task = driver_of(rt).open_tcp("10.0.0.2:40500", _tcp("127.0.0.1", echo_port))
                await asyncio.wait_for(task, 5)
                assert app.reset and not app.accepted
                assert time.monotonic() - started < limit
    finally:
        silent.close()
