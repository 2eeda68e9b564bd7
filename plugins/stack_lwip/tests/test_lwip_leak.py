"""No leak over 100,000 sequential flows: RSS, the C heap (lwIP allocates with malloc) and
lwIP's own pcb lists before and after.

Debian builds lwIP with ``LWIP_STATS 0`` and ``MEMP_MEM_MALLOC 1``: there are no memp
counters to read, and every pcb, segment and pbuf comes from glibc's malloc, so
``mallinfo2().uordblks`` (bytes in use) is the heap-level measure of what lwIP holds.
"""

from __future__ import annotations

import ctypes
import os

import pytest
from lwip_peer import ACK, FIN, PSH, Clock, Peer, make_core
from tunray.stackcore import TcpOpened

FLOWS = int(os.environ.get("TUNRAY_LWIP_LEAK_FLOWS", 100_000))
WARMUP = 5_000


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _heap_in_use() -> int:
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    return int(libc.mallinfo2().uordblks)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _one_flow(peer: Peer, clock: Clock, app_closes_first: bool) -> None:
    core = peer.core
    peer.snd = 1000
    peer.events.clear()
    peer.send(0x02, options=b"\x02\x04\x05\xb4")
    opened = [e for e in peer.events if isinstance(e, TcpOpened)]
    handle = opened[0].handle
    core.tcp_accept(handle, clock.now)
    peer.recv()
    peer.send(ACK | PSH, b"q" * 100)
    assert core.tcp_read(handle, 4096, clock.now) == b"q" * 100
    core.tcp_write(handle, b"r" * 200, clock.now)
    if app_closes_first:
        peer.recv()
        peer.send(ACK | FIN)
        core.tcp_close(handle, clock.now)
        peer.recv()
        peer.send(ACK)
    else:
        core.tcp_close(handle, clock.now)
        peer.recv()
        peer.send(ACK | FIN)
        peer.recv()
    core.handle_timer(clock.tick(0.01))


@pytest.mark.timeout(600)
def test_no_leak_over_100k_sequential_flows() -> None:
    clock = Clock()
    core = make_core(clock, time_wait=0.0)
    peers = [Peer(core, clock, sport=20000 + i) for i in range(64)]  # ports recycle as TIME_WAIT ends

    def run(n: int, offset: int) -> None:
        for i in range(n):
            _one_flow(peers[(offset + i) % len(peers)], clock, (offset + i) % 2 == 0)

    run(WARMUP, 0)
    for _ in range(8):  # let lwIP's timers drain every TIME_WAIT
        core.handle_timer(clock.tick(0.5))
    before_heap, before_rss, before = _heap_in_use(), _rss(), core.stats()
    run(FLOWS, WARMUP)
    for _ in range(8):
        core.handle_timer(clock.tick(0.5))
    core.drain(clock.now)
    core.take_events()
    after_heap, after_rss, after = _heap_in_use(), _rss(), core.stats()
    assert core.counters["tcp_connections"] == WARMUP + FLOWS
    for key in ("tcp_open", "lwip_conns", "lwip_active_pcbs", "lwip_time_wait_pcbs"):
        assert after[key] == before[key] == 0, (key, before, after)
    assert after["lwip_listen_pcbs"] == before["lwip_listen_pcbs"] == 1
    # one leaked 288-byte pcb or one 1.5 KiB pbuf per flow would add 28 / 150 MB
    assert after_heap - before_heap < 2 << 20, f"C heap grew by {after_heap - before_heap} bytes"
    assert after_rss - before_rss < 16 << 20, f"RSS grew by {after_rss - before_rss} bytes"
    core.reset_all(clock.now)
    core.drain(clock.now)
