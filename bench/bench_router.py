"""Per-flow routing cost with 10,000 domain rules and 10,000 CIDRs.

Run: ``.venv/bin/python bench/bench_router.py``.  Builds one router from a config whose
first rule holds 10,000 domain patterns (2,500 each of full:, domain:, keyword: and plain
substring, plus a few regexps) and whose second rule holds 10,000 random CIDRs (IPv4 and
IPv6), then prints the mean ``pick_route`` cost for domain and IP targets that hit and
miss.  The coroutine is driven with ``send(None)`` (it never suspends under AsIs), so the
numbers are the router's own cost, not the event loop's.
"""

from __future__ import annotations

import ipaddress
import random
import string
import time
from collections.abc import Callable
from typing import Any

from tunray.net.address import Destination, Network
from tunray.routing.router import Route, Router
from tunray.session import FlowContext

N = 10_000
ROUNDS = 50_000


def _name(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(5, 12))) + rng.choice(
        (".com", ".net", ".org", ".io")
    )


def build(rng: random.Random) -> tuple[Router, dict[str, str]]:
    kinds = ("full:", "domain:", "keyword:", "")
    domains = [kinds[i % 4] + _name(rng) for i in range(N - 4)]
    domains += [
        r"regexp:^ads[0-9]+\.",
        r"regexp:\.tracker\.",
        "regexp:^[a-z]+-cdn-[0-9]+",
        "dotless:intranet",
    ]
    cidrs = []
    for i in range(N):
        if i % 5 == 0:
            cidrs.append(str(ipaddress.ip_network((rng.getrandbits(128), rng.randint(32, 64)), strict=False)))
        else:
            cidrs.append(str(ipaddress.ip_network((rng.getrandbits(32), rng.randint(12, 28)), strict=False)))
    config = {
        "domainStrategy": "AsIs",
        "rules": [
            {"inboundTag": ["api"], "outboundTag": "api"},
            {"domain": domains, "outboundTag": "proxy"},
            {"ip": cidrs, "outboundTag": "direct"},
            {"network": "udp", "port": "53", "outboundTag": "dns"},
        ],
    }
    t0 = time.perf_counter()
    router = Router.from_config(
        config, "routing", outbound_tags=["proxy", "direct", "dns", "api"], resolver=None
    )
    print(
        f"compile: {(time.perf_counter() - t0) * 1e3:.0f} ms for {len(domains)} domain patterns + {len(cidrs)} CIDRs"
    )
    first_domain = domains[1].partition(":")[2]  # a domain: rule
    first_net = ipaddress.ip_network(cidrs[1])
    targets = {
        "domain hit (suffix rule)": f"www.{first_domain}:443",
        "domain hit (full rule)": f"{domains[0].partition(':')[2]}:443",
        "domain miss": "nothing-matches-here.example:443",
        "IPv4 hit": f"{first_net.network_address + 1}:443",
        "IPv4 miss": f"{_miss(router, rng)}:443",
        "IPv6 miss": "[::1]:443",
    }
    return router, targets


def _miss(router: Router, rng: random.Random) -> ipaddress.IPv4Address:
    matcher = router.rules[2].ip
    assert matcher is not None
    while True:
        ip = ipaddress.IPv4Address(rng.getrandbits(32))
        if not matcher.match(ip):
            return ip


def run(router: Router, ctx: FlowContext) -> Route | None:
    coro = router.pick_route(ctx)
    try:
        coro.send(None)
    except StopIteration as stop:
        result: Route | None = stop.value
        return result
    raise RuntimeError("pick_route suspended under AsIs")


def timeit(fn: Callable[[], Any], repeats: int = 25) -> float:
    """Best mean over *repeats* batches (the minimum filters out noise from other processes)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(ROUNDS // repeats):
            fn()
        best = min(best, (time.perf_counter() - t0) / (ROUNDS // repeats) * 1e6)
    return best


def main() -> None:
    rng = random.Random(2024)
    router, targets = build(rng)
    src = Destination.parse("10.0.0.2:40000")
    print(f"{'target':28} {'route':8} {'µs/flow':>8}")
    for label, text in targets.items():
        ctx = FlowContext("tun-in", "tun", src, Destination.parse(text, Network.TCP))
        route = run(router, ctx)
        cost = timeit(lambda ctx=ctx: run(router, ctx))  # type: ignore[misc]
        print(f"{label:28} {route.outbound_tag if route else 'default':8} {cost:8.2f}")
    empty = Router.from_config(None, "routing", outbound_tags=[], resolver=None)
    ctx = FlowContext("tun-in", "tun", src, Destination.parse("1.1.1.1:1"))
    print(f"{'(empty router: call overhead)':28} {'default':8} {timeit(lambda: run(empty, ctx)):8.2f}")
    base = FlowContext("tun-in", "tun", src, Destination.parse("1.1.1.1:1"))
    print(
        f"{'(FlowContext creation)':28} {'':8} {timeit(lambda: FlowContext('tun-in', 'tun', src, base.target)):8.2f}"
    )


if __name__ == "__main__":
    main()
