"""Per-flow cost of the python stack without a TUN: memory of held flows, CPU per connection.

    .venv/bin/python plugins/stack_python/bench_flows.py [--flows 5000] [--conns 20000] [--profile]

A synthetic app (hand-built packets fed straight into :class:`~tunray_stack_python.core.Core`)
opens connections.  "hold": *flows* connections are handshaken and left idle; the bytes
per flow are measured with ``tracemalloc`` for the core alone and for the asyncio stack
(links, :class:`~tunray.stack.Flow` objects) and as the process's VmRSS growth.
"connect": *conns* full lifecycles (SYN, SYN-ACK, ACK, 32 bytes echoed, FIN both ways,
final ACK) through the core, in µs per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import struct
import time
import tracemalloc

from tunray.net.packet import finish, pseudo_sum, sum_of
from tunray.stack import StackOptions
from tunray_stack_python.core import Core, CoreConfig
from tunray_stack_python.stack import PythonStack
from tunray_stack_python.tcp import TcpConn

APP, REMOTE = bytes((10, 0, 0, 2)), bytes((93, 184, 216, 34))
SYN_OPTS = b"\x02\x04\x05\xb4\x04\x02\x08\x0a\x00\x00\x00\x01\x00\x00\x00\x00\x01\x03\x03\x07"
TS = b"\x01\x01\x08\x0a\x00\x00\x00\x02\x00\x00\x00\x00"


def packet(sport: int, seq: int, ack: int, flags: int, opts: bytes = b"", payload: bytes = b"") -> bytes:
    hl = 20 + len(opts)
    head = struct.pack("!HHIIBBHHH", sport, 443, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, hl << 2, flags, 65535, 0, 0)
    seg = head + opts + payload
    csum = finish(pseudo_sum(APP, REMOTE, 6, len(seg)) + sum_of(seg))
    seg = seg[:16] + struct.pack("!H", csum) + seg[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), 0, 0x4000, 64, 6, 0, APP, REMOTE)
    ip = ip[:10] + struct.pack("!H", finish(sum_of(ip))) + ip[12:]
    return ip + seg


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_flows(core: Core, n: int, now: float, accept: bool = True) -> list[TcpConn]:
    conns = []
    for i in range(n):
        sport = 10000 + i
        core.feed(packet(sport, 1000, 0, 0x02, SYN_OPTS), now)
        handle = core.take_events()[-1].handle
        conn = core.tcp_handles[handle]
        if accept:
            core.tcp_accept(handle, now)
            core.drain(now)
            core.feed(packet(sport, 1001, conn.iss + 1, 0x10, TS), now)
            core.drain(now)
        conns.append(conn)
    return conns


def hold_core(n: int) -> None:
    gc.collect()
    tracemalloc.start()
    core = Core(CoreConfig())
    base = tracemalloc.get_traced_memory()[0]
    conns = open_flows(core, n, 1.0)
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    print(f"core only:   {used / n:8.0f} B/flow (tracemalloc), {len(conns)} flows held")


async def _hold_stack(n: int) -> None:
    stack = PythonStack(StackOptions(mtu=1500))
    loop = stack.loop = asyncio.get_running_loop()
    core = stack.core = stack.make_core(False)
    flows = []
    gc.collect()
    rss0 = rss_kib()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    now = loop.time()
    for i in range(n):
        sport = 10000 + i
        core.feed(packet(sport, 1000, 0, 0x02, SYN_OPTS), now)
        stack._dispatch(core.take_events())
        flow = await stack.accept()
        await flow.link.accept()  # type: ignore[union-attr]
        conn = core.tcp_handles[flow.link.handle]  # type: ignore[union-attr]
        core.drain(now)
        core.feed(packet(sport, 1001, conn.iss + 1, 0x10, TS), now)
        core.drain(now)
        flows.append(flow)
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    gc.collect()
    print(f"with stack:  {used / n:8.0f} B/flow (tracemalloc); "
          f"VmRSS growth {(rss_kib() - rss0) * 1024 / n:6.0f} B/flow (with tracemalloc overhead)")
    assert len(core.conns) == n


def connect_cycle(n: int, profile: bool) -> None:
    core = Core(CoreConfig())
    now = 1.0
    pr = cProfile.Profile() if profile else None
    pkts = []
    for i in range(n):
        sport = 10000 + i % 50000
        pkts.append(sport)
    t0 = time.process_time()
    if pr:
        pr.enable()
    for sport in pkts:
        core.feed(packet(sport, 1000, 0, 0x02, SYN_OPTS), now)
        handle = core.take_events()[-1].handle
        conn = core.tcp_handles[handle]
        core.tcp_accept(handle, now)
        core.drain(now)
        a = conn.iss + 1
        core.feed(packet(sport, 1001, a, 0x18, TS, b"x" * 32), now)
        data = core.tcp_read(handle, 65536, now)
        assert data
        core.tcp_write(handle, data, now)
        core.drain(now)
        core.feed(packet(sport, 1033, a + 32, 0x11, TS), now)  # ACK of the echo + FIN
        core.tcp_close(handle, now)
        core.drain(now)
        core.feed(packet(sport, 1034, a + 33, 0x10, TS), now)  # ACK of our FIN
        core.drain(now)
        assert conn.state.value == "closed", conn.state
        core.take_events()
    if pr:
        pr.disable()
    dt = time.process_time() - t0
    # Packet building is part of the loop; measure it alone to subtract.
    t1 = time.process_time()
    for sport in pkts:
        packet(sport, 1000, 0, 0x02, SYN_OPTS)
        packet(sport, 1001, 1, 0x18, TS, b"x" * 32)
        packet(sport, 1033, 33, 0x11, TS)
        packet(sport, 1034, 34, 0x10, TS)
    gen = time.process_time() - t1
    print(f"connect/echo/close: {(dt - gen) / n * 1e6:7.1f} µs per connection in the core "
          f"({n} connections, packet building excluded, CPU time)")
    if pr:
        pstats.Stats(pr).sort_stats("tottime").print_stats(18)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flows", type=int, default=5000)
    parser.add_argument("--conns", type=int, default=20000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    hold_core(args.flows)
    asyncio.run(_hold_stack(args.flows))
    for _ in range(args.repeat):
        connect_cycle(args.conns, args.profile)


if __name__ == "__main__":
    main()
