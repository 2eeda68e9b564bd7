"""dokodemo-door with ``followRedirect`` under real nftables rules (REDIRECT and TPROXY).

Two namespaces from :class:`Topology`: the app (curl, a UDP client) and tunray share the
client namespace, whose nftables rules send the app's traffic for the server (10.200.0.2)
into tunray; tunray's own sockets carry mark 0xff (``sockopt.mark`` on freedom) so the
rules let them through to the real server.  The server namespace runs a web server and
the echo server.  This is how OpenWRT-style transparent proxies use Xray without a TUN.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tunray.log import AccessLog
from tunray.testing.harness import running
from tunray.testing.netns import Topology, ns_exec
from tunray.testing.proxyclients import free_port

pytestmark = [pytest.mark.root, pytest.mark.timeout(90)]
WEB = 8080
ECHO = 7000
MARK = 0xFF
BLOB = os.urandom(2 << 20)


@pytest.fixture
def topo(tmp_path: Path) -> Iterator[Topology]:
    t = Topology.create(prefix="tnf")
    try:
        www = tmp_path / "www"
        www.mkdir()
        (www / "blob").write_bytes(BLOB)
        t.spawn(t.server, [sys.executable, "-u", "-m", "http.server", str(WEB), "--bind", "::", "--directory", str(www)], ready=b"Serving")
        t.start_echo(port=ECHO)
        yield t
    finally:
        t.remove()


def nft(topo: Topology, rules: str) -> None:
    proc = subprocess.run(["ip", "netns", "exec", topo.client, "nft", "-f", "-"], input=rules, text=True, capture_output=True)
    assert proc.returncode == 0, f"nft: {proc.stderr}"


def _config(port: int, listen: str, network: str, tproxy: str) -> dict[str, Any]:
    return {
        "log": {"loglevel": "warning"},
        "inbounds": [
            {
                "tag": "tp-in",
                "protocol": "dokodemo-door",
                "listen": listen,
                "port": port,
                "settings": {"network": network, "followRedirect": True},
                "streamSettings": {"sockopt": {"tproxy": tproxy}},
            }
        ],
        "outbounds": [{"tag": "out", "protocol": "freedom", "streamSettings": {"sockopt": {"mark": MARK}}}],
    }


async def _curl(url: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "20", url, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, f"curl {url}: {err.decode(errors='replace')}"
    return out


@pytest.mark.parametrize("family", ["ip", "ip6"])
async def test_followredirect_with_nft_redirect(family: str, topo: Topology) -> None:
    """REDIRECT: the original destination from SO_ORIGINAL_DST (IP6T_SO_ORIGINAL_DST for IPv6,
    both on the one dual-stack socket of ``listen: 0.0.0.0``)."""
    port = 12345
    server, client = (topo.server_v4, topo.client_v4) if family == "ip" else (topo.server_v6, topo.client_v6)
    netloc = f"{server}:{WEB}" if family == "ip" else f"[{server}]:{WEB}"
    here = f"{client}:{port}" if family == "ip" else f"[{client}]:{port}"
    nft(
        topo,
        f"""
        table {family} tunray_redirect {{
          chain out {{
            type nat hook output priority -100; policy accept;
            meta mark {MARK} return
            {family} daddr {server} tcp dport {WEB} redirect to :{port}
          }}
        }}
        """,
    )
    out = io.StringIO()
    with topo.enter(topo.client):
        async with running(_config(port, "0.0.0.0", "tcp", "redirect"), access_log=AccessLog(out)):
            body = await _curl(f"http://{netloc}/blob")
            # a connection straight to the inbound (not redirected) would loop: closed, as Xray does
            reader, writer = await asyncio.open_connection(str(client), port)
            try:  # (sending nothing: unread bytes would turn the close into a reset)
                assert await asyncio.wait_for(reader.read(-1), 5) == b""
            finally:
                writer.close()
    assert hashlib.sha256(body).digest() == hashlib.sha256(BLOB).digest()
    # the original destination, not the redirect port, reached the outbound
    assert f"accepted tcp:{netloc} [tp-in >> out]" in out.getvalue(), out.getvalue()
    assert f"rejected  loopback connection detected: tcp:{here}" in out.getvalue(), out.getvalue()


@pytest.mark.parametrize("listen", ["127.0.0.1", "0.0.0.0"])  # 0.0.0.0: one dual-stack socket
async def test_followredirect_with_nft_tproxy_tcp_and_udp(listen: str, topo: Topology) -> None:
    port = free_port()
    ns_exec(topo.client, "ip", "rule", "add", "fwmark", "1", "lookup", "100")
    ns_exec(topo.client, "ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")
    ports = f"{{ {WEB}, {ECHO}-{ECHO + 3} }}"
    nft(
        topo,
        f"""
        table ip tunray_tproxy {{
          chain pre {{
            type filter hook prerouting priority mangle; policy accept;
            ip daddr {topo.server_v4} meta l4proto {{ tcp, udp }} th dport {ports} meta mark set 1 tproxy to 127.0.0.1:{port} accept
          }}
          chain out {{
            type route hook output priority mangle; policy accept;
            meta mark {MARK} return
            ip daddr {topo.server_v4} meta l4proto {{ tcp, udp }} th dport {ports} meta mark set 1
          }}
        }}
        """,
    )
    out = io.StringIO()
    with topo.enter(topo.client):
        async with running(_config(port, listen, "tcp,udp", "tproxy"), access_log=AccessLog(out)):
            body = await _curl(f"http://{topo.server_v4}:{WEB}/blob")
            assert hashlib.sha256(body).digest() == hashlib.sha256(BLOB).digest()
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.settimeout(5)
                sock.bind(("0.0.0.0", 0))
                for i in range(3):
                    sock.sendto(b"tp-%d" % i, (str(topo.server_v4), ECHO))
                    data, addr = await asyncio.to_thread(sock.recvfrom, 65535)
                    # the reply carries the server's address: the transparent reply socket spoofs it
                    assert (data, addr) == (b"tp-%d" % i, (str(topo.server_v4), ECHO))
                # full cone: a datagram to port+1 is answered from port+1 and port+3
                sock.sendto(b"cone", (str(topo.server_v4), ECHO + 1))
                sources = set()
                for _ in range(2):
                    data, addr = await asyncio.to_thread(sock.recvfrom, 65535)
                    assert data == b"cone"
                    sources.add(addr)
                assert sources == {(str(topo.server_v4), ECHO + 1), (str(topo.server_v4), ECHO + 3)}, sources
            finally:
                sock.close()
    log = out.getvalue()
    assert f"accepted tcp:{topo.server_v4}:{WEB} [tp-in >> out]" in log, log
    assert f"accepted udp:{topo.server_v4}:{ECHO} [tp-in >> out]" in log, log
