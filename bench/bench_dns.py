"""Queries per second through the ``dns`` outbound, answered from FakeDNS, hosts and the cache.

Run: ``.venv/bin/python bench/bench_dns.py [--queries N] [--window W]`` (smoke run:
``--queries 2000``).  One UDP flow from the driver inbound is routed to ``dns-out``;
the app keeps ``W`` queries outstanding and the script prints answered queries per
second for three answer sources that need no network: FakeDNS (a fresh name each
time, so the pool's allocation is measured), a ``hosts`` entry, and a cached answer
from a name server (one query to an in-process responder fills the cache).  It also
prints the resolver's table sizes afterwards, which stay at their bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import time
from collections.abc import Callable
from typing import Any

from tunray.dns.message import A, Record, build_query, build_response, parse_message
from tunray.net.address import Destination, Network
from tunray.testing.harness import driver_of, running

TO = Destination.parse("192.0.2.53:53", Network.UDP)


class _Responder(asyncio.DatagramProtocol):
    transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        query = parse_message(data)
        answer = Record(query.questions[0].name, A, 3600, ipaddress.ip_address("192.0.2.99"))
        self.transport.sendto(build_response(query, [answer]), addr)


async def _run(rt: Any, name_of: Callable[[int], str], n: int, window: int) -> float:
    app, _task = driver_of(rt).open_udp("10.0.0.5:5353", TO)
    start = time.perf_counter()
    sent = answered = 0
    while sent < min(window, n):
        app.send(build_query(sent & 0xFFFF, name_of(sent), A), TO)
        sent += 1
    while answered < n:
        await app.recv()
        answered += 1
        if sent < n:
            app.send(build_query(sent & 0xFFFF, name_of(sent), A), TO)
            sent += 1
    app.close()
    return n / (time.perf_counter() - start)


async def main(n: int, window: int) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_Responder, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    cfg = {
        "log": {"loglevel": "none", "access": "none"},
        "fakedns": {"ipPool": "198.18.0.0/15", "poolSize": 65535},
        "dns": {
            "servers": [
                {"address": "fakedns", "domains": ["domain:fake.test"], "skipFallback": True},
                {"address": "127.0.0.1", "port": port},
            ],
            "hosts": {"h.test": "192.0.2.7"},
        },
        "inbounds": [{"protocol": "driver", "tag": "app", "settings": {"lazy": False}}],
        "outbounds": [
            {"protocol": "freedom", "tag": "direct"},
            {"protocol": "dns", "tag": "dns-out", "settings": {}},
        ],
        "routing": {"rules": [{"port": 53, "outboundTag": "dns-out"}]},
    }
    try:
        async with running(cfg) as rt:
            for label, name_of in (
                ("fakedns (new name each)", lambda i: f"n{i}.fake.test"),
                ("hosts", lambda i: "h.test"),
                ("cached server answer", lambda i: "cached.example.test"),
            ):
                qps = await _run(rt, name_of, n, window)
                print(f"{label:26s} {qps:10.0f} queries/s")
            print(f"fakedns names {len(rt.resolver.fakedns)}, cache entries {rt.resolver.cache_entries}")
    finally:
        transport.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=50_000)
    parser.add_argument("--window", type=int, default=32)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(args.queries, args.window))
