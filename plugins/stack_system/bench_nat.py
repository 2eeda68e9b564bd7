"""Per-packet cost of the system stack's NAT (sans-IO, no device): ``python plugins/stack_system/bench_nat.py``.

Feeds the packets of short connections (SYN, SYN-ACK, ACK, request, response, ACK, FIN, FIN-ACK,
ACK: what one ``connrate`` loop sends through the NAT) and bulk segments through
:class:`~tunray_stack_system.core.SystemCore` (``feed``, and ``feed_into`` as the stack reads) and prints microseconds per packet and per
connection.  The kernel's share (the TUN write) is not in it: bench/bench_cps.py has the total.

Then the stack's read loop itself, over a descriptor pair standing in for the TUN
(``tunray.device.device_pair``): the same connections' packets read, rewritten and written
back by the pure-Python loop (``readv`` + ``feed_into`` + ``os.write``, as
``SystemStack._on_readable``) and by the C loop (``FastTable.pump``, notes, ``feed_slow``
for what C declines, as ``SystemStack._pump``): CPU per connection, syscalls included.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Callable

from tunray.device import FdDevice, device_pair
from tunray.testing.stackclient import ipv4, tcp
from tunray_stack_system import fastpath
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
    loop_cost("stack loop, Python", False, python_loop)
    loop_cost("stack loop, C", True, c_loop)


def python_loop(core: SystemCore, fd: int, buf: bytearray, now: float) -> None:
    view = memoryview(buf)
    while True:
        try:
            n = os.readv(fd, [buf])
        except BlockingIOError:
            return
        if core.feed_into(buf, n, now):
            os.write(fd, view[:n])
            continue
        core.feed_slow(bytes(view[:n]), now)
        for p in core.out:
            os.write(fd, p)
        core.out.clear()


def c_loop(core: SystemCore, fd: int, buf: bytearray, now: float) -> None:
    fast = core.fast
    assert fast is not None
    view = memoryview(buf)
    while True:
        code, _done, n, notes = fast.pump(fd, 512, now)
        if notes:
            core.apply_notes(now)
        if code == fastpath.SLOW:
            core.feed_slow(bytes(view[:n]), now)
            for p in core.out:
                os.write(fd, p)
            core.out.clear()
        elif code != fastpath.BATCH:
            return


def loop_cost(name: str, use_c: bool, loop: Callable[[SystemCore, int, bytearray, float], None]) -> None:
    """CPU per connection of the stack's read loop over a descriptor pair (chunks of 100 connections)."""
    core = SystemCore(SystemConfig(eager=True, max_flows=1 << 17), {4: Side(TUN, NXT, LPORT)})
    buf = bytearray(65536 + 64)
    if use_c and core.use_c(buf) is None:
        print(f"{name}: the C fast path is not built")
        return
    tun, app = device_pair(65535)
    n, chunk, spent = 5000, 100, 0.0
    try:
        for first in range(0, n, chunk):
            for i in range(first, first + chunk):
                for p in connection_packets(20000 + i % 40000, 10000 + i):
                    app.write(p)
            t0 = time.process_time()
            loop(core, tun.fileno(), buf, 1.0)
            spent += time.process_time() - t0
            core.drain(1.0)
            core.take_events()
            drain(app)
    finally:
        tun.close()
        app.close()
    print(f"{name}: {spent / n * 1e6:.1f} µs CPU per connection (9 packets read and written back)")


def drain(dev: FdDevice) -> None:
    while dev.read() is not None:
        pass


if __name__ == "__main__":
    main()
