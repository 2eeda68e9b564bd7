"""The resolver and the ``dns`` outbound against real servers in a test namespace.

World: ``server`` namespace runs dnsmasq (zone ``*.zone.test``, authoritative for
``.test``) on 10.200.0.2:53 and dnsdist serving DoH on 10.200.0.2:443 in front of it
(self-signed certificate, trusted through ``SSL_CERT_FILE`` as Go and OpenSSL do).
tunray runs in-process with this thread in the ``client`` namespace; app flows are
injected with the driver inbound.  Nothing leaves the two namespaces.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import random
import ssl
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from tunray.dns import Resolver
from tunray.dns.doh import DoHUpstream
from tunray.dns.message import AAAA, NOERROR, NXDOMAIN, REFUSED, TXT, A, Message, build_query, parse_message
from tunray.dns.routed import LocalConnector
from tunray.log import AccessLog
from tunray.net.address import Destination, Network
from tunray.runtime import Runtime
from tunray.testing.dnsservers import Zone, have, start_dnsdist, start_dnsmasq
from tunray.testing.harness import driver_of, running
from tunray.testing.links import PacketAppEnd
from tunray.testing.netns import Topology

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        not (have("dnsmasq") and have("dnsdist") and have("dig")),
        reason="scripts/install adds dnsmasq, dnsdist, dig",
    ),
]

SERVER = "10.200.0.2"
BIG = 120  # A records for big.zone.test: ~2 KB, more than any UDP answer here may carry
ZONE = Zone(
    a={"www.zone.test": ["10.200.0.2"], "two.zone.test": ["192.0.2.1", "192.0.2.2"],
       "big.zone.test": [f"10.9.{i // 250}.{i % 250 + 1}" for i in range(BIG)]},
    aaaa={"www.zone.test": ["fd00:200::2"]},
    txt={"txt.zone.test": "hello"},
    wildcard={"wild.zone.test": "10.77.0.1"},
)  # fmt: skip


@contextmanager
def world(doh: bool = False) -> Iterator[tuple[Topology, Path]]:
    topo = Topology.create(prefix="td")
    tmp = Path(tempfile.mkdtemp(prefix="tunray-dns-"))
    try:
        start_dnsmasq(topo, topo.server, SERVER, ZONE, tmp)
        if doh:
            _, cert = start_dnsdist(topo, topo.server, SERVER, SERVER, tmp)
            mp = pytest.MonkeyPatch()
            mp.setenv("SSL_CERT_FILE", str(cert.cert_file))
            try:
                yield topo, tmp
            finally:
                mp.undo()
        else:
            yield topo, tmp
    finally:
        topo.remove()


def ips(*texts: str) -> list[Any]:
    return [ipaddress.ip_address(t) for t in texts]


# --- the resolver's server kinds ---------------------------------------------------------


@pytest.mark.parametrize(
    "server",
    [
        SERVER,
        f"udp://{SERVER}:53",
        f"tcp+local://{SERVER}",
        f"tcp://{SERVER}:53",
        f"https+local://{SERVER}/dns-query",
        f"h2c+local://{SERVER}/dns-query",
    ],
)
async def test_server_kinds_answer_from_the_real_zone(server: str) -> None:
    with world(doh=server.startswith(("https", "h2c"))) as (topo, _):
        with topo.enter(topo.client):
            r = Resolver.from_config({"servers": [server]}, "dns")
            try:
                assert await r.lookup("www.zone.test") == ips("10.200.0.2", "fd00:200::2")
                assert await r.lookup("two.zone.test", "UseIPv4") == ips("192.0.2.1", "192.0.2.2")
                answer = await r.resolve("missing.zone.test", True, False)
                assert (answer.ips, answer.rcode) == ([], NXDOMAIN)
                # concurrent lookups of distinct names (wildcard zone) all get their answer
                names = [f"c{i}.wild.zone.test" for i in range(20)]
                answers = await asyncio.gather(*(r.lookup(n, "UseIPv4") for n in names))
                assert answers == [ips("10.77.0.1")] * 20
                upstream = r.servers[0].upstream
                if isinstance(upstream, DoHUpstream):  # every query was a stream on one HTTP/2 connection
                    assert upstream.connections == 1
            finally:
                await r.aclose()


async def test_doh_over_http1_when_the_server_picks_it() -> None:
    with world(doh=True) as (topo, _):
        with topo.enter(topo.client):
            r = Resolver.from_config({"servers": [f"https+local://{SERVER}/dns-query"]}, "dns")
            upstream = r.servers[0].make_upstream(LocalConnector())
            assert isinstance(upstream, DoHUpstream)
            ctx = ssl.create_default_context()
            ctx.set_alpn_protocols(["http/1.1"])  # only HTTP/1.1 on offer: h11 carries it
            upstream._ssl = ctx
            msg = await upstream.exchange("www.zone.test", A, 4.0)
            assert [r.data for r in msg.answers] == ips("10.200.0.2")


async def test_truncated_udp_answer_is_retried_over_tcp() -> None:
    with world() as (topo, _):
        with topo.enter(topo.client):
            r = Resolver.from_config({"servers": [SERVER]}, "dns")
            got = await r.lookup("big.zone.test", "UseIPv4")
            # 120 A records do not fit the 1350 bytes EDNS0 allows over UDP: TCP carried them.
            assert len(got) == BIG and set(got) == set(ips(*ZONE.a["big.zone.test"]))


# --- the dns outbound --------------------------------------------------------------------


def _cfg(dns_out: dict[str, Any], dns: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "log": {"loglevel": "warning"},
        "dns": dns or {"servers": [SERVER]},
        "inbounds": [{"protocol": "driver", "tag": "app", "settings": {"lazy": False}}],
        "outbounds": [
            {"protocol": "freedom", "tag": "direct"},
            {"protocol": "dns", "tag": "dns-out", "settings": dns_out},
        ],
        "routing": {"rules": [{"port": 53, "outboundTag": "dns-out"}]},
    }
    cfg.update(top)
    return cfg


@asynccontextmanager
async def runtime(cfg: dict[str, Any], log: io.StringIO | None = None) -> AsyncIterator[Runtime]:
    async with running(cfg, access_log=AccessLog(log or io.StringIO())) as rt:
        yield rt


_qid = iter(range(1, 1 << 16))


async def ask_udp(
    app: PacketAppEnd, name: str, qtype: int, to: str = SERVER, timeout: float = 3.0
) -> Message | None:
    qid = next(_qid)
    app.send(build_query(qid, name, qtype), Destination.parse(f"{to}:53", Network.UDP))
    try:
        async with asyncio.timeout(timeout):
            while True:
                packet = await app.recv()
                msg = parse_message(packet.data)
                if msg.id == qid:
                    assert packet.peer == Destination.parse(
                        f"{to}:53", Network.UDP
                    )  # answers come from where the app asked
                    return msg
    except TimeoutError:
        return None


def _txt(msg: Message) -> list[bytes]:
    return [bytes(r.data)[1:] for r in msg.answers if r.rtype == TXT and isinstance(r.data, bytes)]


@pytest.mark.parametrize("mode", ["skip", "reject", "drop", None])
async def test_non_ip_query_variants(mode: str | None) -> None:
    settings: dict[str, Any] = {} if mode is None else {"nonIPQuery": mode}
    with world() as (topo, _):
        with topo.enter(topo.client):
            async with runtime(_cfg(settings)) as rt:
                app, _task = driver_of(rt).open_udp("10.0.0.5:5353", f"{SERVER}:53")
                a = await ask_udp(app, "www.zone.test", A)
                assert (
                    a is not None and [r.data for r in a.answers] == ips("10.200.0.2") and a.rcode == NOERROR
                )
                aaaa = await ask_udp(app, "www.zone.test", AAAA)
                assert aaaa is not None and [r.data for r in aaaa.answers] == ips("fd00:200::2")
                nx = await ask_udp(app, "nope.zone.test", A)
                assert nx is not None and nx.rcode == NXDOMAIN and not nx.answers
                txt = await ask_udp(app, "txt.zone.test", TXT, timeout=1.5)
                if mode == "skip":  # forwarded to the server the app asked, answer relayed
                    assert txt is not None and _txt(txt) == [b"hello"]
                elif mode == "drop":
                    assert txt is None
                    # the flow is still alive after a dropped query
                    again = await ask_udp(app, "two.zone.test", A)
                    assert again is not None and len(again.answers) == 2
                elif mode == "reject":  # the legacy default
                    assert txt is not None and txt.rcode == REFUSED and not txt.answers
                else:  # no rules at all: Xray answers other types empty
                    assert txt is not None and txt.rcode == NOERROR and not txt.answers


async def test_rules_block_types_and_rewrite_over_tcp() -> None:
    rules = [
        {"action": "return", "qType": 28, "rCode": 3},
        {"action": "drop", "domain": ["blocked"]},
        {"action": "direct", "qType": "16"},
    ]
    with world() as (topo, _):
        with topo.enter(topo.client):
            # The app asks 192.0.2.53 over TCP; address/network send forwarded queries to dnsmasq over UDP.
            cfg = _cfg({"rules": rules, "address": SERVER, "network": "udp"})
            async with runtime(cfg) as rt:
                app, _task = driver_of(rt).open_tcp("10.0.0.5:40000", "192.0.2.53:53")

                async def ask(name: str, qtype: int, qid: int) -> Message:
                    q = build_query(qid, name, qtype)
                    await app.send(len(q).to_bytes(2, "big") + q)
                    size = int.from_bytes(await app.recv_exactly(2), "big")
                    return parse_message(await app.recv_exactly(size))

                txt = await ask("txt.zone.test", TXT, 1)
                assert _txt(txt) == [b"hello"]
                six = await ask("www.zone.test", AAAA, 2)
                assert six.rcode == NXDOMAIN and not six.answers
                q = build_query(3, "x.blocked.zone.test", A)
                await app.send(len(q).to_bytes(2, "big") + q)
                four = await ask("www.zone.test", A, 4)  # the dropped query got nothing; the next is answered
                assert four.id == 4 and [r.data for r in four.answers] == ips("10.200.0.2")
                app.shutdown_write()
                assert await app.recv_all() == b""


async def test_flood_of_random_names_keeps_every_table_bounded() -> None:
    dns = {
        "servers": [{"address": "fakedns", "domains": ["domain:fake.test"], "skipFallback": True}, SERVER],
        "cacheSize": 64,
        "maxConcurrentQueries": 32,
    }
    fakedns = {"ipPool": "198.18.0.0/16", "poolSize": 100}
    with world() as (topo, _):
        with topo.enter(topo.client):
            async with runtime(_cfg({}, dns, fakedns=fakedns)) as rt:
                app, _task = driver_of(rt).open_udp("10.0.0.5:5353", f"{SERVER}:53")
                rng = random.Random(7)
                answered = 0
                for burst in range(10):
                    for i in range(100):
                        suffix = "fake.test" if i % 2 else "wild.zone.test"
                        app.send(build_query(burst * 100 + i, f"{rng.getrandbits(40):x}.{suffix}", A),
                                 Destination.parse(f"{SERVER}:53", Network.UDP))  # fmt: skip
                    while True:  # collect answers until the burst is over
                        try:
                            async with asyncio.timeout(1.0):
                                await app.recv()
                        except TimeoutError:
                            break
                        answered += 1
                resolver = rt.resolver
                assert resolver.fakedns is not None and len(resolver.fakedns) == 100
                assert resolver.cache_entries == 64  # 500 cacheable answers, the oldest evicted
                assert resolver._in_flight == 0 and not resolver._pending
                assert answered >= 500  # most got through; the rest were dropped, not queued
                fake_ips = [ip for p in resolver.fakedns.pools for ip in p._by_ip]
                assert len(set(fake_ips)) == len(fake_ips)


async def test_malformed_messages_are_dropped_and_counted() -> None:
    """Garbage, responses and question-less messages are dropped; the flow keeps answering (hosts only)."""
    cfg = _cfg({}, {"hosts": {"h.test": "192.0.2.7"}})
    async with runtime(cfg) as rt:
        app, _task = driver_of(rt).open_udp("10.0.0.5:5353", f"{SERVER}:53")
        to = Destination.parse(f"{SERVER}:53", Network.UDP)
        response = bytearray(build_query(9, "h.test", A))
        response[2] |= 0x80
        junk = [b"", b"\x00", b"\xff" * 40, bytes(response), build_query(10, "h.test", A)[:12] + b"\x00\x00"]
        junk.append(b"\x00\x0b\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01")  # pointer loop
        for data in junk:
            app.send(data, to)
        got = await ask_udp(app, "h.test", A)
        assert got is not None and [r.data for r in got.answers] == ips("192.0.2.7")
        assert rt.outbounds["dns-out"].malformed == len(junk)
