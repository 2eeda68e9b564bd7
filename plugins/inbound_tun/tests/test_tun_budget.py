"""The total buffered-bytes budget (``maxBufferedBytes``) through a real TUN, the kernel as the apps' TCP.

Many apps upload while their server stalls: the stack may hold at most the budget for all of
them together (windows stop opening, nothing is dropped), says so once in its log and counters,
and once the server reads again every byte of every flow arrives intact.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import socket
import threading
import time
from typing import Any

import pytest
import tun_helpers
from loguru import logger
from tun_helpers import sh, topology, tun_config, tun_of
from tunray.log import AccessLog
from tunray.testing.echo import pattern
from tunray.testing.harness import running
from tunray.testing.netns import Topology

pytestmark = pytest.mark.root

TUN = "trbudget0"
HOST = "203.0.113.10"
PORT = 7100
FLOWS = 12
SIZE = 2 << 20  # per flow: well beyond what the kernel buffers on the way hold
#: per stack, about a third of what the flows' windows would hold without it (python: 1 MiB per
#: flow as tcpBufferSize says; lwip: Debian's 64 KiB window)
BUDGETS = {"python": 4 << 20, "lwip": 256 << 10}


class StalledServer:
    """Accepts in the server namespace but reads nothing until :meth:`resume`; then hashes each flow."""

    def __init__(self, topo: Topology) -> None:
        with topo.enter(topo.server):
            self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)  # accepted sockets inherit it
        self.sock.bind((HOST, PORT))
        self.sock.listen(64)
        self.conns: list[socket.socket] = []
        self.results: dict[int, tuple[int, bytes]] = {}  # flow index (first 4 bytes) -> (length, sha256)
        self.go = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while len(self.conns) < FLOWS:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            t = threading.Thread(target=self._read, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _read(self, conn: socket.socket) -> None:
        self.go.wait()
        h = hashlib.sha256()
        n = 0
        first = b""
        with conn:
            conn.settimeout(60)
            while chunk := conn.recv(1 << 16):
                if len(first) < 4:
                    first += chunk[: 4 - len(first)]
                h.update(chunk)
                n += len(chunk)
        self.results[int.from_bytes(first, "big")] = (n, h.digest())

    def resume(self) -> None:
        self.go.set()

    def join(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        for t in self._threads[1:]:
            t.join(max(0.0, end - time.monotonic()))
        self.sock.close()


def _payload(i: int) -> bytes:
    return i.to_bytes(4, "big") + pattern(SIZE - 4, seed=i)


def _app(topo: Topology, i: int, errors: list[str]) -> None:
    try:
        with topo.enter(topo.client):
            s = socket.socket()
        with s:
            s.settimeout(60)
            s.connect((HOST, PORT))
            s.sendall(_payload(i))
            s.shutdown(socket.SHUT_WR)
            if s.recv(1) != b"":
                errors.append(f"flow {i}: data from a sink")
    except OSError as exc:
        errors.append(f"flow {i}: {exc!r}")


def _held_by_stack(stack: Any) -> int:
    """Bytes the stack really holds for its TCP flows, read from its own state (not the gauge)."""
    core = stack.core
    if stack.name == "python":
        return sum(len(c.rcvbuf) + (c.ooo.size if c.ooo else 0) for c in core.conns.values())
    return int(core.stats()["lwip_rx_bytes"])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stack", ["python", "lwip"])
async def test_stalled_upstreams_hold_no_more_than_the_budget_and_lose_nothing(stack: str) -> None:
    budget = BUDGETS[stack]
    with topology() as topo:
        sh(topo.server, "ip", "addr", "add", f"{HOST}/32", "dev", "lo")
        sh(topo.client, "ip", "route", "add", "default", "via", str(topo.server_v4), "dev", topo.client_if)
        # small kernel buffers, so the apps' bytes pile up in the stack, not in the kernel
        sh(topo.client, "sysctl", "-q", "-w", "net.ipv4.tcp_wmem=4096 16384 65536")
        settings = {"name": TUN, "gateway": ["172.19.23.1/30"], "autoSystemRoutingTable": [f"{HOST}/32"],
                    "autoOutboundsInterface": topo.client_if, "stack": stack, "mtu": 1500,
                    "tcpBufferSize": 1024, "maxBufferedBytes": budget, "maxFlows": 64}
        server = StalledServer(topo)
        errors: list[str] = []
        apps = [threading.Thread(target=_app, args=(topo, i, errors), daemon=True) for i in range(FLOWS)]
        messages: list[str] = []
        sink = logger.add(lambda m: messages.append(str(m)), level="WARNING", format="{message}")
        try:
            with topo.enter(topo.client):
                async with running(tun_config(settings), extra=[tun_helpers], access_log=AccessLog(io.StringIO())) as rt:
                    st = tun_of(rt).stack
                    assert st is not None
                    for t in apps:
                        t.start()
                    # until every flow is connected and the windows stopped moving
                    held: list[int] = []
                    deadline = time.monotonic() + 30
                    while time.monotonic() < deadline:
                        await asyncio.sleep(0.2)
                        held.append(_held_by_stack(st))
                        if len(server.conns) == FLOWS and len(held) > 5 and held[-1] == held[-5] and held[-1]:
                            break
                    stats = st.stats()
                    assert len(server.conns) == FLOWS, (len(server.conns), stats)
                    assert max(held) <= budget, (max(held), stats)
                    assert held[-1] > budget // 2, f"the stack held only {held[-1]}: the test did not fill it"
                    assert stats["buffered_bytes_peak"] <= budget, stats
                    assert stats["buffered_bytes_limit"] == budget, stats
                    assert stats["tcp_buffer_budget_full"] >= 1, stats
                    server.resume()
                    await asyncio.gather(*(asyncio.to_thread(t.join, 60) for t in apps))
                    await asyncio.to_thread(server.join, 30)
        finally:
            logger.remove(sink)
        assert not errors, errors
        for i in range(FLOWS):
            assert server.results.get(i) == (SIZE, hashlib.sha256(_payload(i)).digest()), f"flow {i} differs"
        assert sum("limit reached: maxBufferedBytes" in m for m in messages) == 1, messages
