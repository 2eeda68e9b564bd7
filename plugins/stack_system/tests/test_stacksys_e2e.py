"""End to end through the whole runtime: app -> TUN -> system stack (kernel TCP) -> dispatcher -> freedom.

The accepted socket and freedom's socket are both bare kernel sockets, so the relay splices
them (``tunray.splice.stats`` counts it): bytes must arrive intact both ways, at MTU 65535
(the stack's default) and 1500, IPv4 and IPv6, with the eager and the lazy handshake, through
the stack's C read loop (``fastpath.c``) and once through the pure-Python one.

World: the client namespace holds the TUN (172.19.30.1/30, fd00:30::1/126) and the runtime;
the server namespace holds 203.0.113.10 / 2001:db8:30::10 on ``lo`` with the test echo
servers (P: echo, P+1: source repeating a 1 MiB pattern, P+2: sink answering SHA-256).
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import struct
from typing import Any

import pytest
from tunray import splice
from tunray.relay import CHUNK, SPLICE_AFTER
from tunray.testing.echo import pattern
from tunray.testing.harness import running
from tunray.testing.netns import Topology, ns_exec

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

HOST4, HOST6 = "203.0.113.10", "2001:db8:30::10"
ECHO = 7000
SIZE = 16 << 20


def _config(topo: Topology, mtu: int | None, handshake: str) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "name": "trsys0", "gateway": ["172.19.30.1/30", "fd00:30::1/126"],
        "autoSystemRoutingTable": ["203.0.113.0/24", "2001:db8:30::/48"], "autoOutboundsInterface": topo.client_if,
        "stack": "system", "handshake": handshake,
    }
    if mtu is not None:
        settings["mtu"] = mtu
    return {
        "log": {"loglevel": "warning", "access": "none"},
        "inbounds": [{"tag": "tun-in", "protocol": "tun", "settings": settings}],
        "outbounds": [{"tag": "direct", "protocol": "freedom"}],
    }


def _transfer(host: str) -> tuple[bytes, bytes, bytes]:
    """Upload SIZE bytes to the sink (returns its digest), download SIZE from the source, echo 64 KiB."""
    data = pattern(SIZE, seed=3)
    with socket.create_connection((host, ECHO + 2), timeout=30) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        digest = b""
        while chunk := s.recv(64):
            digest += chunk
    with socket.create_connection((host, ECHO + 1), timeout=30) as s:
        s.sendall(struct.pack("!Q", SIZE))
        got = bytearray()
        while chunk := s.recv(1 << 20):
            got += chunk
    with socket.create_connection((host, ECHO), timeout=30) as s:
        msg = pattern(65536, seed=9)
        s.sendall(msg)
        s.shutdown(socket.SHUT_WR)
        back = bytearray()
        while chunk := s.recv(65536):
            back += chunk
    return digest, bytes(got), bytes(back)


@pytest.mark.parametrize(("mtu", "handshake", "loop"), [(None, "lazy", "c"), (1500, "eager", "c"), (1500, "lazy", "python")],
                         ids=["mtu-default-lazy", "mtu1500-eager", "mtu1500-lazy-python-loop"])
async def test_bulk_both_ways_is_spliced_and_intact(mtu: int | None, handshake: str, loop: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    if loop == "python":  # the pure-Python read loop, as without the extension
        monkeypatch.setenv("TUNRAY_STACK_SYSTEM_NO_C", "1")
    topo = Topology.create("trsy")
    try:
        ns_exec(topo.server, "ip", "addr", "add", f"{HOST4}/32", "dev", "lo")
        ns_exec(topo.server, "ip", "addr", "add", f"{HOST6}/128", "dev", "lo")
        ns_exec(topo.client, "ip", "route", "add", "default", "via", str(topo.server_v4), "dev", topo.client_if)
        ns_exec(topo.client, "ip", "-6", "route", "add", "default", "via", str(topo.server_v6), "dev", topo.client_if)
        topo.start_echo(port=ECHO)
        with topo.enter(topo.client):
            async with running(_config(topo, mtu, handshake)) as rt:
                link = ns_exec(topo.client, "ip", "-o", "link", "show", "trsys0").stdout
                assert f"mtu {mtu or 65535} " in link, link
                for host in (HOST4, HOST6):
                    flows, spliced, copied = splice.stats.flows, splice.stats.bytes, splice.stats.copied

                    def run(h: str = host) -> tuple[bytes, bytes, bytes]:
                        with topo.enter(topo.client):
                            return _transfer(h)

                    digest, got, back = await asyncio.to_thread(run)
                    assert digest == hashlib.sha256(pattern(SIZE, seed=3)).digest(), f"upload to {host} corrupted"
                    assert got == pattern(1 << 20) * (SIZE >> 20), f"download from {host}: {len(got)} of {SIZE} bytes or corrupted"
                    assert back == pattern(65536, seed=9), f"echo via {host}"
                    # the two bulk flows at least (a short flow, like the echo, is only copied)
                    assert splice.stats.flows - flows >= 2, "the bulk flows' relays did not splice"
                    spliced, copied = splice.stats.bytes - spliced, splice.stats.copied - copied
                    assert spliced + copied >= 2 * SIZE, "the bulk flows moved too little"
                    # all but their start (the first SPLICE_AFTER bytes and a chunk) went through splice(2)
                    assert copied <= 2 * (SPLICE_AFTER + CHUNK) * (splice.stats.flows - flows), copied
                # the stack's C loop read the packets of known flows (tunray_stack_system.fastpath), or none did
                stats = rt.snapshot()["inbounds"]["tun-in"]
                if loop == "c":
                    assert stats.get("tcp_c_packets", 0) > 1000, stats
                else:
                    assert "tcp_c_packets" not in stats, stats
    finally:
        topo.remove()
