"""The shared buffer budget (``tunray.stackbudget``) and UDP queues under it (``tunray.stackudp``)."""

from __future__ import annotations

from tunray.net.packet import build_udp, parse_ip
from tunray.stackbudget import FULL, BufferBudget
from tunray.stackcore import CoreEvent, UdpOpened
from tunray.stackudp import UdpTable

APP, FAR = bytes((10, 0, 0, 2)), bytes((198, 51, 100, 7))


def _budget(limit: int) -> tuple[BufferBudget, dict[str, int]]:
    counters: dict[str, int] = {}

    def count(what: str, n: int = 1) -> None:
        counters[what] = counters.get(what, 0) + n

    return BufferBudget(limit, count), counters


def test_room_charges_releases_and_one_count_per_time_it_ran_out() -> None:
    b, counters = _budget(1000)
    b.charge(700)
    assert b.room() == 300 and b.pressure  # more than half is held
    b.charge(300)
    assert b.room() == 0
    b.denied("c")
    b.denied("c")
    b.denied("d")
    assert counters == {FULL: 1}, "one count per time the budget ran out, not per denial"
    assert b.stats() == {"buffered_bytes": 1000, "buffered_bytes_peak": 1000, "buffered_bytes_limit": 1000}
    assert b.take_waiters() == []  # nothing free yet
    b.release(300)
    assert sorted(b.take_waiters()) == ["c", "d"]  # type: ignore[type-var]
    assert b.used == 700 and b.peak == 1000
    b.denied("c")
    assert counters == {FULL: 2}  # ran out again after room came back
    b.release(700)
    assert not b.pressure and b.share(4) == 250


def _table(budget: BufferBudget | None) -> tuple[UdpTable, list[CoreEvent], dict[str, int]]:
    counters: dict[str, int] = {}
    events: list[CoreEvent] = []
    handles = iter(range(1, 100))

    def count(what: str, n: int = 1) -> None:
        counters[what] = counters.get(what, 0) + n

    table = UdpTable(mtu=1500, vnet_hdr=False, idle_timeout=60.0, queue_packets=100, count=count,
                     events=events.append, out=lambda p: None, new_handle=lambda: next(handles), budget=budget)
    return table, events, counters


def _feed(table: UdpTable, sport: int, payload: bytes) -> None:
    packet = build_udp(4, APP, sport, FAR, 53, payload, False)
    parsed = parse_ip(packet, 0, False)
    assert not isinstance(parsed, str)
    version, src, dst, _proto, l4, end = parsed
    table.input(version, src, dst, packet, l4, end, False, 1.0)


def test_udp_datagrams_beyond_the_budget_are_dropped_and_reading_makes_room() -> None:
    b, _ = _budget(3000)
    table, events, table_counters = _table(b)
    for i in range(4):
        _feed(table, 5000, bytes([i]) * 1000)
    assert table_counters["udp_buffer_budget_full"] == 1  # the fourth did not fit
    [opened] = [e for e in events if isinstance(e, UdpOpened)]
    assert b.used == 3000
    got = table.recv(opened.handle)
    assert got is not None and got[0] == b"\0" * 1000
    assert b.used == 2000
    _feed(table, 5000, b"\4" * 1000)  # room again
    assert b.used == 3000 and table_counters["udp_buffer_budget_full"] == 1
    table.close(opened.handle)
    assert b.used == 0, "closing a flow gives back what its queue held"


def test_udp_budget_drop_is_counted() -> None:
    b, _ = _budget(1500)
    table, _events, counters = _table(b)
    _feed(table, 5000, b"a" * 1000)
    _feed(table, 5000, b"b" * 1000)  # does not fit: dropped whole, nothing kept reserved
    assert counters.get("udp_buffer_budget_full") == 1 and b.used == 1000
