"""SYN-flood defence of the core: half-open budgets, SYN cookies, stale eviction (synflood.py).

Before: every SYN took a flow slot and a dial until maxFlows; a spoofed flood locked out real apps.
"""

from __future__ import annotations

from stackpy_wire import ACK, PSH, RST, SYN, decode, syn_opts, tcp, udp
from tunray.stackcore import TcpOpened
from tunray_stack_python.core import Core, CoreConfig
from tunray_stack_python.synflood import SynCookies
from tunray_stack_python.tcp_state import State

SERVER = "203.0.113.10"
NOW = 1000.0


def _spoofed(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255 or 1}"


def _core(**kw: object) -> Core:
    return Core(CoreConfig(**kw), isn=lambda: 7777)  # type: ignore[arg-type]


def _opened(core: Core) -> list[TcpOpened]:
    return [e for e in core.take_events() if isinstance(e, TcpOpened)]


def test_the_global_budget_holds_state_for_that_many_and_answers_the_rest_with_cookies() -> None:
    core = _core(max_half_open=8)
    for i in range(40):
        core.feed(tcp(_spoofed(i + 1), SERVER, 40000, 80, 1000 + i, 0, SYN, options=syn_opts()), NOW)
    assert len(_opened(core)) == 8  # 8 dials at most; the flood cannot open more
    out = [decode(p) for p in core.drain(NOW)]
    assert len(out) == 32 and all(seg.flags == SYN | ACK for seg in out)
    assert all(set(seg.options) == {2} for seg in out), "a cookie SYN-ACK carries the MSS option only"
    assert len(core.conns) == 8 and len(core.half_open) == 8
    assert core.counters["tcp_syn_cookies_sent"] == 32


def test_a_real_client_gets_through_a_full_budget_with_a_cookie() -> None:
    core = _core(max_half_open=4)
    for i in range(4):
        core.feed(tcp(_spoofed(i + 1), SERVER, 40000, 80, 1, 0, SYN), NOW)
    core.take_events()
    app = "10.99.0.2"
    core.feed(tcp(app, SERVER, 41000, 80, 5000, 0, SYN, options=syn_opts()), NOW + 0.01)
    (synack,) = [decode(p) for p in core.drain(NOW + 0.01)]
    assert synack.flags == SYN | ACK and synack.ack == 5001 and not _opened(core)
    # the app completes the handshake and sends data in the same breath
    core.feed(tcp(app, SERVER, 41000, 80, 5001, synack.seq + 1, ACK | PSH, payload=b"hello"), NOW + 0.02)
    (ev,) = _opened(core)
    assert not ev.pending, "a cookie connection is established when it is announced"
    conn = core.tcp_handles[ev.handle]
    assert conn.state is State.ESTABLISHED and conn.mss == 1460
    assert core.tcp_read(ev.handle, 100, NOW + 0.02) == b"hello"
    assert core.counters["tcp_syn_cookies_accepted"] == 1


def test_a_forged_or_stale_cookie_is_refused() -> None:
    core = _core(max_half_open=1)
    core.feed(tcp(_spoofed(1), SERVER, 40000, 80, 1, 0, SYN), NOW)
    core.feed(tcp("10.99.0.2", SERVER, 41000, 80, 5000, 0, SYN), NOW)
    (synack,) = [decode(p) for p in core.drain(NOW)][-1:]
    core.take_events()
    for seq, ack, at in ((5001, synack.seq + 2, NOW), (5002, synack.seq + 1, NOW), (5001, synack.seq + 1, NOW + 200)):
        core.feed(tcp("10.99.0.2", SERVER, 41000, 80, seq, ack, ACK), at)
        out = [decode(p) for p in core.drain(at)]
        assert out and out[0].flags == RST, (seq, ack, at)
    assert not _opened(core) and "tcp_syn_cookies_accepted" not in core.counters


def test_one_source_cannot_take_more_than_its_share() -> None:
    core = _core(max_half_open=100, max_half_open_per_source=3)
    for port in range(10):
        core.feed(tcp("10.1.1.1", SERVER, 40000 + port, 80, 1, 0, SYN), NOW)
    core.feed(tcp("10.2.2.2", SERVER, 40000, 80, 1, 0, SYN), NOW)
    opened = _opened(core)
    assert [e.src_port for e in opened if e.src_ip == bytes((10, 1, 1, 1))] == [40000, 40001, 40002]
    assert any(e.src_ip == bytes((10, 2, 2, 2)) for e in opened), "another source still gets state"
    assert core.counters["tcp_syn_cookies_sent"] == 7


def test_stale_half_open_entries_are_evicted_oldest_first() -> None:
    core = _core(max_half_open=2, handshake_timeout=4.0)
    core.feed(tcp(_spoofed(1), SERVER, 40000, 80, 1, 0, SYN), NOW)
    core.feed(tcp(_spoofed(2), SERVER, 40000, 80, 1, 0, SYN), NOW + 1)
    core.take_events()
    core.feed(tcp(_spoofed(3), SERVER, 40000, 80, 1, 0, SYN), NOW + 4.5)  # the first is past the timeout
    (ev,) = _opened(core)
    assert ev.src_ip == bytes((10, 0, 0, 3)) and core.counters["tcp_half_open_evicted"] == 1
    assert len(core.half_open) == 2


def test_completed_handshakes_leave_the_budget() -> None:
    core = _core(max_half_open=2)
    for port in (40000, 40001):
        core.feed(tcp("10.3.3.3", SERVER, port, 80, 1, 0, SYN), NOW)
    for ev in _opened(core):
        core.tcp_accept(ev.handle, NOW)
    for seg in [decode(p) for p in core.drain(NOW)]:
        core.feed(tcp("10.3.3.3", SERVER, seg.dport, 80, 2, seg.seq + 1, ACK), NOW)
    assert not core.half_open
    core.feed(tcp("10.3.3.3", SERVER, 40002, 80, 1, 0, SYN), NOW)
    assert len(_opened(core)) == 1


def test_cookie_round_trip() -> None:
    c = SynCookies(b"k" * 16)
    isn = c.make(b"\x0a\x00\x00\x02", 1, b"\xcb\x00\x71\x0a", 2, 99, 1460, NOW)
    assert c.check(b"\x0a\x00\x00\x02", 1, b"\xcb\x00\x71\x0a", 2, 100, isn + 1, NOW + 70) == 1460
    assert c.check(b"\x0a\x00\x00\x03", 1, b"\xcb\x00\x71\x0a", 2, 100, isn + 1, NOW) is None
    assert c.check(b"\x0a\x00\x00\x02", 1, b"\xcb\x00\x71\x0a", 2, 100, isn + 1, NOW + 130) is None


def test_a_full_udp_nat_table_evicts_the_least_recently_used_flow() -> None:
    """Before: a full table dropped every new UDP flow (a spoofed UDP flood locked out DNS)."""
    core = _core(max_flows=3)
    for host in ("10.5.0.1", "10.5.0.2", "10.5.0.3"):
        core.feed(udp(host, SERVER, 5353, 53, b"q"), NOW)
    core.feed(udp("10.5.0.1", SERVER, 5353, 53, b"again"), NOW + 1)  # 10.5.0.1 is now the most recent
    core.take_events()
    core.feed(udp("10.5.0.4", SERVER, 5353, 53, b"new"), NOW + 2)
    evs = core.take_events()
    assert [type(e).__name__ for e in evs] == ["UdpClosed", "UdpOpened"]
    assert sorted(src for src, _ in core.udp.flows) == [bytes((10, 5, 0, n)) for n in (1, 3, 4)]
    assert core.counters["udp_lru_evicted"] == 1 and "udp_max_flows" not in core.counters
