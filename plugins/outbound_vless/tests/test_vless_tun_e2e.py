"""End to end: app -> kernel -> TUN (python or lwip stack) -> routing -> vless (TLS) -> sing-box -> echo.

World (made per test, removed after)::

    client ns                                         server ns
    app ──> tvtun0 (172.19.0.1/30)                    lo: 203.0.113.10/32 (echo, TCP+UDP)
            203.0.113.0/24 routed into the TUN
            tunray (in-process, this thread in ns) ── veth 10.200.0.1 ──── 10.200.0.2:10443 sing-box
            127.0.0.1:<sink> counts connections                            VLESS+TLS, direct out

Only the app's range goes into the TUN; the VLESS server sits on the veth subnet,
so tunray's own dial never re-enters it (no loop recipe needed).  Routing sends
203.0.113.99 to a freedom outbound redirected to the sink (a control that proves the
sink counts) and everything else to the proxy: a failing proxy flow must never show
up at freedom.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from tunray.log import AccessLog
from tunray.testing.certs import make_cert
from tunray.testing.harness import running
from tunray.testing.netns import Topology, ns_exec
from vless_servers import RunningServer, start_sing_box, vless_outbound

pytestmark = pytest.mark.root

T = TypeVar("T")
STACKS = ["python", "lwip"]  # both first-party stacks carry VLESS the same way
TUN = "tvtun0"
HOST = "203.0.113.10"  # the app's destination, on the server's lo
CONTROL = "203.0.113.99"  # routed to freedom -> sink
ECHO = 7000
WRONG_ID = "00000000-0000-4000-8000-000000000001"


@contextlib.contextmanager
def _topology() -> Iterator[Topology]:
    topo = Topology.create(prefix="tu")
    try:
        yield topo
    finally:
        procs = list(topo.procs)
        topo.remove()
        for proc in procs:  # remove() leaves the pipes open (ResourceWarning)
            for pipe in (proc.stdout, proc.stderr, proc.stdin):
                if pipe is not None:
                    pipe.close()
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
        assert topo.client not in left and topo.server not in left, "a test namespace was left behind"


def _world(topo: Topology, tmp_path: Path, user_id: str) -> tuple[RunningServer, dict[str, Any]]:
    """Echo servers and a sing-box VLESS+TLS server in the server namespace; the client's outbound."""
    ns_exec(topo.server, "ip", "addr", "add", f"{HOST}/32", "dev", "lo")
    topo.start_echo(port=ECHO)  # TCP 7000-7002, UDP 7000 (XUDP)
    topo.start_echo(port=53)  # UDP 53: the plain VLESS UDP framing
    cert = make_cert(tmp_path, ips=(str(topo.server_v4),))
    srv = start_sing_box(tmp_path, tls=cert, host="::", port=10443, prefix=["ip", "netns", "exec", topo.server])
    srv.host = str(topo.server_v4)
    return srv, vless_outbound(srv, tls=cert, user_id=user_id)


def _config(proxy: dict[str, Any], sink_port: int, stack: str) -> dict[str, Any]:
    return {
        "log": {"loglevel": "warning"},
        "inbounds": [
            {
                "protocol": "tun",
                "tag": "tun-in",
                "settings": {
                    "name": TUN,
                    "gateway": ["172.19.0.1/30"],
                    "autoSystemRoutingTable": ["203.0.113.0/24"],
                    "autoOutboundsInterface": "",
                    "stack": stack,
                },
            }
        ],
        "outbounds": [
            dict(proxy, tag="proxy"),
            {"protocol": "freedom", "tag": "direct", "settings": {"redirect": f"127.0.0.1:{sink_port}"}},
        ],
        "routing": {"rules": [{"ip": [f"{CONTROL}/32"], "outboundTag": "direct"}]},
        "policy": {"levels": {"0": {"handshake": 3, "connIdle": 30, "uplinkOnly": 1, "downlinkOnly": 1}}},
    }


@contextlib.asynccontextmanager
async def _sink() -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP server on 127.0.0.1 (in the current namespace) that counts and closes connections."""
    count = [0]

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        count[0] += 1
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], count
    finally:
        server.close()
        await server.wait_closed()


# --- the app (blocking socket code, run in a thread inside the client namespace) ---------------


async def _in_client(topo: Topology, fn: Callable[..., T], *args: Any) -> T:
    def call() -> T:
        with topo.enter(topo.client):
            return fn(*args)

    return await asyncio.to_thread(call)


def _tcp_echo(host: str, port: int, size: int) -> int:
    """Send *size* random bytes while reading the echo; check its SHA-256; return the byte count."""
    payload = os.urandom(size)
    digest = hashlib.sha256()
    got = 0
    with socket.create_connection((host, port), timeout=15) as s:

        def send() -> None:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        try:
            while chunk := s.recv(1 << 20):
                digest.update(chunk)
                got += len(chunk)
        finally:
            sender.join()
    assert got == size, f"echo returned {got} of {size} bytes"
    assert digest.digest() == hashlib.sha256(payload).digest(), "echoed bytes differ"
    return got


def _udp_echo(host: str, port: int, count: int = 5) -> set[tuple[str, int]]:
    """Datagrams to a UDP echo; each must come back intact; returns the reply sources."""
    sources: set[tuple[str, int]] = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        for i in range(count):
            msg = b"tun-vless-%d-" % i + os.urandom(12)
            for _attempt in range(3):
                s.sendto(msg, (host, port))
                try:
                    data, peer = s.recvfrom(65536)
                except TimeoutError:
                    continue
                assert data == msg, "UDP echo returned other bytes"
                sources.add(peer)
                break
            else:
                raise AssertionError(f"no UDP echo from {host}:{port} for datagram {i}")
    return sources


def _until_closed(host: str, port: int) -> float:
    """Connect, send, and wait for the connection to end (FIN or RST); return seconds taken."""
    started = time.monotonic()
    with socket.create_connection((host, port), timeout=10) as s:
        s.settimeout(10)
        try:
            s.sendall(b"hello through a proxy that will refuse us")
            while s.recv(65536):
                pass
        except (ConnectionResetError, BrokenPipeError):
            pass
    return time.monotonic() - started


def _connect_once(host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=5) as s:
        s.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            s.recv(1)


def _routed(log: str) -> list[tuple[str, str]]:
    """(target, outbound tag) for every accepted flow in the access log."""
    return re.findall(r"accepted (\S+) \[tun-in (?:->|>>) (\S+)\]", log)


# --- tests -------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("stack", STACKS)
async def test_tcp_and_udp_through_tun_and_vless_tls(tmp_path: Path, stack: str) -> None:
    with _topology() as topo:
        srv, proxy = _world(topo, tmp_path, user_id="27848739-7e62-4138-9fd3-098a63964b6b")
        log = io.StringIO()
        try:
            with topo.enter(topo.client):
                async with _sink() as (sink_port, sink_count), running(
                    _config(proxy, sink_port, stack), access_log=AccessLog(log)
                ):
                    got = await asyncio.gather(
                        _in_client(topo, _tcp_echo, HOST, ECHO, 4 << 20),
                        *(_in_client(topo, _tcp_echo, HOST, ECHO, 256 * 1024) for _ in range(4)),
                    )
                    assert got == [4 << 20] + [256 * 1024] * 4
                    xudp_sources = await _in_client(topo, _udp_echo, HOST, ECHO)
                    plain_sources = await _in_client(topo, _udp_echo, HOST, 53)
        finally:
            srv.stop()
        assert xudp_sources == {(HOST, ECHO)} and plain_sources == {(HOST, 53)}
        assert sink_count == [0]
        routed = _routed(log.getvalue())
        assert {tag for _, tag in routed} == {"proxy"}, log.getvalue()
        assert {t for t, _ in routed} >= {f"tcp:{HOST}:{ECHO}", f"udp:{HOST}:{ECHO}", f"udp:{HOST}:53"}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stack", STACKS)
async def test_wrong_uuid_closes_the_app_promptly_and_nothing_leaks_to_freedom(tmp_path: Path, stack: str) -> None:
    with _topology() as topo:
        srv, proxy = _world(topo, tmp_path, user_id=WRONG_ID)
        log = io.StringIO()
        try:
            with topo.enter(topo.client):
                async with _sink() as (sink_port, sink_count), running(
                    _config(proxy, sink_port, stack), access_log=AccessLog(log)
                ):
                    # control: the freedom route does reach the sink, and it counts
                    await _in_client(topo, _connect_once, CONTROL, 80)
                    for _ in range(100):
                        if sink_count[0]:
                            break
                        await asyncio.sleep(0.01)
                    assert sink_count == [1], "the control flow never reached freedom's sink"
                    elapsed = await asyncio.gather(*(_in_client(topo, _until_closed, HOST, ECHO) for _ in range(3)))
                    await asyncio.sleep(0.2)  # a late fallback would have shown by now
        finally:
            srv.stop()
        assert max(elapsed) < 2.0, f"the app waited {max(elapsed):.2f}s for a refused proxy flow"
        assert sink_count == [1], "a refused proxy flow leaked to freedom"
        routed = _routed(log.getvalue())
        assert routed.count((f"tcp:{HOST}:{ECHO}", "proxy")) == 3, log.getvalue()
        assert [r for r in routed if r[1] == "direct"] == [(f"tcp:{CONTROL}:80", "direct")], log.getvalue()
