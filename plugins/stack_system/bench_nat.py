"""Per-packet cost of the system stack's NAT (sans-IO, no device): ``python plugins/stack_system/bench_nat.py``.

Feeds the packets of short connections (SYN, SYN-ACK, ACK, request, response, ACK, FIN, FIN-ACK,
ACK: what one ``connrate`` loop sends through the NAT) and bulk segments through
:class:`~tunray_stack_system.core.SystemCore` (``feed``, and ``feed_into`` as the stack reads) and prints microseconds per packet and per
connection.  The kernel's share (the TUN write) is not in it: bench/bench_cps.py has the total.
"""

from __future__ import annotations

import ipaddress
import time

from tunray.testing.stackclient import ipv4, tcp
from tunray_stack_system.core import SystemConfig, SystemCore
from tunray_stack_system.nat import Side

SYN, ACK, FIN, PSH = 0x02, 0x10, 0x01, 0x08
APP, FAR, TUN, NXT = (ipaddress.ip_address(a).packed for a in ("10.9.0.1", "198.51.100.7", "10.9.0.1", "10.9.0.2"))
LPORT = 40000


def connection_packets(sport: int, nat_port: int) -> list[bytes]:
    up = [(SYN, b""), (ACK, b""), (ACK | PSH, b"x" * 32), (ACK, b""), (FIN | ACK, b""), (ACK, b"")]
    down = [(SYN | ACK, b""), (ACK | PSH, b"x" * 32), (FIN | ACK, b"")]
    out = [ipv4(APP, FAR, 6, tcp(APP, FAR, sport, 7000, 1000, 1, f, d)) for f, d in up]
    out += [ipv4(TUN, NXT, 6, tcp(TUN, NXT, LPORT, nat_port, 5000, 1001, f, d)) for f, d in down]
    return out


def main() -> None:
    n = 5000
    core = SystemCore(SystemConfig(eager=True, max_flows=1 << 17), {4: Side(TUN, NXT, LPORT)})
    conns = [connection_packets(20000 + i % 40000, 10000 + i) for i in range(n)]
    t0 = time.perf_counter()
    now = 1.0
    packets = 0
    for pkts in conns:
        for p in pkts:
            core.feed(p, now)
        packets += len(pkts)
        core.drain(now)
    dt = time.perf_counter() - t0
    print(f"short connections: {dt / packets * 1e6:.2f} µs per packet, {dt / n * 1e6:.1f} µs per connection "
          f"({packets // n} packets each)")
    bulk = ipv4(APP, FAR, 6, tcp(APP, FAR, 20000, 7000, 1000, 1, ACK, bytes(65000)))
    core.feed(conns[0][0], now)
    t0 = time.perf_counter()
    for _ in range(20000):
        core.feed(bulk, now)
        core.drain(now)
    dt = time.perf_counter() - t0
    print(f"64 KB segments: {dt / 20000 * 1e6:.2f} µs per packet ({65000 * 8 * 20000 / dt / 1e9:.0f} Gbit/s of NAT)")
    # the system stack's own read path: one reused buffer, rewritten in place (feed_into); the
    # refill stands in for the device read's copy into it
    buf = bytearray(len(bulk) + 64)
    t0 = time.perf_counter()
    for _ in range(20000):
        buf[:len(bulk)] = bulk
        if not core.feed_into(buf, len(bulk), now):
            raise SystemExit("feed_into refused the bulk segment")
    dt = time.perf_counter() - t0
    print(f"64 KB segments in place (incl. refilling the buffer): {dt / 20000 * 1e6:.2f} µs per packet")


if __name__ == "__main__":
    main()
