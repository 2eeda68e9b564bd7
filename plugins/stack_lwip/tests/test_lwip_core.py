"""LwipCore in memory: a scripted app peer, a fake clock, the real liblwip underneath."""

from __future__ import annotations

import pytest
from lwip_peer import ACK, FIN, PSH, RST, SYN, Clock, Peer, make_core, parse
from tunray.stackcore import SendClosed, TcpClosed, TcpOpened, TcpPeerEof, TcpReadable, TcpReset, TcpWritable
from tunray_stack_lwip.core import LwipCore


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _end(core: LwipCore, clock: Clock) -> None:
    """Reset everything, release every handle, and check nothing is left in lwIP or the glue."""
    core.reset_all(clock.now)
    for handle in list(core.tcp):
        core.tcp_abort(handle, clock.now)
    core.drain(clock.now)
    core.take_events()
    stats = core.stats()
    assert (stats["lwip_conns"], stats["lwip_active_pcbs"], stats["lwip_time_wait_pcbs"],
            stats["lwip_listen_pcbs"]) == (0, 0, 0, 0), stats


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_lazy_syn_is_held_until_accept_and_replies_come_from_the_destination(clock: Clock, v6: bool) -> None:
    core = make_core(clock)
    peer = Peer(core, clock, v6=v6)
    peer.send(SYN, options=b"\x02\x04\x05\xb4")
    assert peer.recv() == [], "a lazy SYN must not be answered before tcp_accept"
    opened = [e for e in peer.events if isinstance(e, TcpOpened)]
    assert len(opened) == 1 and opened[0].pending
    assert (opened[0].src_ip, opened[0].src_port, opened[0].dst_ip, opened[0].dst_port) == (
        peer.src, peer.sport, peer.dst, peer.dport)
    peer.send(SYN, options=b"\x02\x04\x05\xb4", seq=1000)  # a retransmission: still one flow
    assert len([e for e in peer.events if isinstance(e, TcpOpened)]) == 1
    core.tcp_accept(opened[0].handle, clock.now)
    (synack,) = peer.recv()
    assert synack.flags == SYN | ACK and synack.ack == 1001
    assert (synack.src, synack.sport) == (peer.dst, peer.dport)
    _end(core, clock)


def test_lazy_refusal_answers_rst(clock: Clock) -> None:
    core = make_core(clock)
    peer = Peer(core, clock)
    peer.send(SYN)
    (opened,) = [e for e in peer.events if isinstance(e, TcpOpened)]
    core.tcp_abort(opened.handle, clock.now)
    (rst,) = peer.recv()
    assert rst.flags & RST and rst.ack == 1001
    assert core.stats()["lwip_active_pcbs"] == 0
    _end(core, clock)


def test_eager_answers_at_once_and_opens_after_the_handshake(clock: Clock) -> None:
    core = make_core(clock, eager=True)
    peer = Peer(core, clock)
    handle = peer.handshake()
    (opened,) = [e for e in peer.events if isinstance(e, TcpOpened)]
    assert not opened.pending and opened.handle == handle
    _end(core, clock)


def test_data_both_ways_half_close_and_clean_end(clock: Clock) -> None:
    core = make_core(clock)
    peer = Peer(core, clock)
    h = peer.handshake()
    assert core.tcp_read(h, 100, clock.now) is None
    peer.send(ACK | PSH, b"hello")
    assert TcpReadable(h) in peer.events
    assert core.tcp_read(h, 100, clock.now) == b"hello"
    peer.send(ACK | FIN)  # the app half-closes
    assert TcpPeerEof(h) in peer.events
    assert core.tcp_read(h, 100, clock.now) == b""
    assert core.tcp_write(h, b"reply after your FIN", clock.now)
    segs = peer.recv()
    assert b"".join(s.payload for s in segs) == b"reply after your FIN"
    core.tcp_shutdown(h, clock.now)
    (fin,) = peer.recv()
    assert fin.flags & FIN
    peer.send(ACK)
    ends = [e for e in peer.events if isinstance(e, (TcpClosed, TcpReset))]
    assert ends == [TcpClosed(h)]
    with pytest.raises(SendClosed):
        core.tcp_write(h, b"x", clock.now)
    core.tcp_close(h, clock.now)
    assert core.stats()["lwip_conns"] == 0
    _end(core, clock)


def test_rst_from_the_app_is_a_reset_and_buffered_bytes_stay_readable(clock: Clock) -> None:
    core = make_core(clock)
    peer = Peer(core, clock)
    h = peer.handshake()
    peer.send(ACK | PSH, b"last words")
    peer.send(RST | ACK)
    assert [e for e in peer.events if isinstance(e, (TcpClosed, TcpReset))] == [TcpReset(h)]
    assert core.tcp_read(h, 100, clock.now) == b"last words"
    assert core.tcp_read(h, 100, clock.now) == b""
    core.tcp_close(h, clock.now)
    assert core.stats()["lwip_conns"] == 0
    _end(core, clock)


def test_writes_before_the_handshake_completes_are_sent_after_it(clock: Clock) -> None:
    core = make_core(clock)
    peer = Peer(core, clock)
    peer.send(SYN)
    (opened,) = [e for e in peer.events if isinstance(e, TcpOpened)]
    h = opened.handle
    core.tcp_accept(h, clock.now)
    assert core.tcp_write(h, b"early", clock.now)
    core.tcp_close(h, clock.now)  # released before lwIP even accepted
    peer.recv()
    peer.send(ACK)
    segs = peer.recv()
    assert b"".join(s.payload for s in segs) == b"early" and segs[-1].flags & FIN
    _end(core, clock)


def test_backpressure_window_closes_until_read_and_writes_wait(clock: Clock) -> None:
    core = make_core(clock, send_high_water=64 << 10)
    peer = Peer(core, clock)
    h = peer.handshake()
    for _ in range(60):  # 60 * 1400 > 64 KiB: the window must close
        peer.send(ACK, b"u" * 1400)
    acks = peer.recv()
    assert acks[-1].window < 4096, "lwIP's window must shrink while the driver does not read"
    got = core.tcp_read(h, 1 << 20, clock.now)
    assert got is not None and 40000 < len(got) <= 65535
    assert not core.tcp_write(h, b"d" * (200 << 10), clock.now), "above the high-water mark"
    assert not core.tcp_writable(h)
    for _ in range(200):
        segs = peer.recv()
        if not segs:
            break
        peer.send(ACK)
        if TcpWritable(h) in peer.events:
            break
    assert TcpWritable(h) in peer.events
    _end(core, clock)


def test_gso_merges_a_burst_and_mss_is_raised_in_the_syn_ack(clock: Clock) -> None:
    core = make_core(clock, vnet_hdr=True, gso=True, mtu=65535)
    peer = Peer(core, clock, vnet=True)
    peer.send(SYN, options=b"\x02\x04\xff\xd7")
    (opened,) = [e for e in peer.events if isinstance(e, TcpOpened)]
    core.tcp_accept(opened.handle, clock.now)
    (synack,) = peer.recv()
    assert synack.options[:2] == b"\x02\x04" and int.from_bytes(synack.options[2:4], "big") == 65535 - 40
    peer.send(ACK)
    core.tcp_write(opened.handle, bytes(range(256)) * 40, clock.now)  # 10240 bytes: several segments
    segs = []
    for _ in range(20):  # ACK each burst until everything arrived
        burst = peer.recv()
        if not burst:
            break
        segs += burst
        peer.send(ACK)
    supers = [s for s in segs if s.vnet[1] == 1]  # VIRTIO_NET_HDR_GSO_TCPV4
    assert supers, "consecutive full segments must leave as one GSO super-packet"
    assert all(s.vnet[0] == 1 and int.from_bytes(s.vnet[4:6], "little") == 1460 for s in supers)
    assert b"".join(s.payload for s in segs) == bytes(range(256)) * 40
    assert core.stats()["gso_merged"] >= 1
    _end(core, clock)


def test_timers_run_on_the_callers_clock(clock: Clock) -> None:
    core = make_core(clock, handshake_timeout=4.0)
    peer = Peer(core, clock)
    h = peer.handshake()
    core.tcp_write(h, b"lost", clock.now)
    (first,) = peer.recv()
    deadline = core.next_timer()
    assert deadline is not None and deadline - clock.now <= 1.0
    again = []
    for _ in range(24):  # 6 s of fake time in timer steps, no ACK: lwIP retransmits on *our* time
        core.handle_timer(clock.tick(0.25))
        again += peer.recv()
    assert any(s.payload == b"lost" and s.seq == first.seq for s in again), again
    _end(core, clock)


def test_unanswered_handshake_times_out_with_reset(clock: Clock) -> None:
    core = make_core(clock, handshake_timeout=2.0)
    peer = Peer(core, clock)
    peer.send(SYN)
    (opened,) = [e for e in peer.events if isinstance(e, TcpOpened)]
    assert core.next_timer() == pytest.approx(clock.now + 2.0)
    core.handle_timer(clock.tick(2.5))
    assert TcpReset(opened.handle) in core.take_events()
    (rst,) = peer.recv()
    assert rst.flags & RST
    _end(core, clock)


def test_malformed_tcp_is_counted(clock: Clock) -> None:
    core = make_core(clock)
    peer = Peer(core, clock)
    bad = bytearray(peer_syn := _syn(peer))
    bad[-1] ^= 0xFF  # checksum no longer matches
    core.feed(bytes(bad), clock.now)
    core.feed(peer_syn[:20] + peer_syn[20:30], clock.now)  # header cut short
    assert core.counters.get("tcp_bad_checksum") == 1
    assert sum(core.counters.values()) == 2
    _end(core, clock)


def _syn(peer: Peer) -> bytes:
    from tunray_stack_lwip.binding import tcp_segment

    return tcp_segment(peer.src, peer.dst, peer.sport, peer.dport, 5, 0, SYN, options=b"\x02\x04\x05\xb4")


def test_second_live_core_is_refused(clock: Clock) -> None:
    core = make_core(clock)
    with pytest.raises(RuntimeError, match="one instance per process"):
        make_core(clock)
    _end(core, clock)
    make_core(clock).reset_all(clock.now)


def test_parse_helper_reads_what_it_builds() -> None:
    seg = parse(_syn(Peer.__new__(Peer)) if False else _syn_for_parse())
    assert seg.flags == SYN and seg.options == b"\x02\x04\x05\xb4"


def _syn_for_parse() -> bytes:
    from lwip_peer import APP4, FAR4
    from tunray_stack_lwip.binding import tcp_segment

    return tcp_segment(APP4, FAR4, 1, 2, 3, 0, SYN, options=b"\x02\x04\x05\xb4")


def test_new_syn_on_a_time_wait_tuple_opens_a_new_connection(clock: Clock) -> None:
    core = make_core(clock, time_wait=60.0)
    peer = Peer(core, clock)
    h = peer.handshake()
    core.tcp_close(h, clock.now)  # we close first: lwIP ends in TIME_WAIT
    peer.recv()
    peer.send(ACK | FIN)
    peer.recv()
    assert core.stats()["lwip_time_wait_pcbs"] == 1
    peer.snd += 100_000  # the app reuses its port at once, with a later ISN (as Linux does)
    peer.events.clear()
    h2 = peer.handshake()
    assert h2 != h and core.stats()["lwip_time_wait_pcbs"] == 0
    _end(core, clock)


def test_out_of_order_bytes_beyond_the_window_are_clipped_before_lwip(clock: Clock) -> None:
    """lwIP 2.1.3 bug #56397: an out-of-order segment past the window, then a longer one with the
    same sequence number, then the gap: unclipped, lwIP aborts the process on an assertion."""
    core = make_core(clock)
    peer = Peer(core, clock)
    h = peer.handshake()
    data = bytes(i % 251 for i in range(70_000))
    base = peer.snd
    before = core.stats()["segments_clipped"]
    peer.send(ACK, data[1000:60_000], seq=base + 1000)  # ends past the 65535-byte window
    peer.send(ACK, data[1000:66_000], seq=base + 1000)  # same start, longer
    assert core.stats()["segments_clipped"] - before >= 1
    peer.send(ACK, data[:1000])  # the gap: lwIP now delivers the queued bytes in order
    got = b""
    while (chunk := core.tcp_read(h, 1 << 20, clock.now)):
        got += chunk
    assert got == data[:65_535]
    _end(core, clock)


def test_hostile_segments_are_dropped_before_lwip_and_counted(clock: Clock) -> None:
    """What Debian's lwIP 2.1.3 would mishandle: a SYN inside a connection, an option whose length
    byte lies past the header.  Both are dropped and counted; the connection carries on."""
    core = make_core(clock)
    peer = Peer(core, clock)
    h = peer.handshake()
    peer.send(SYN | ACK, b"x" * 10, seq=peer.snd)
    peer.send(ACK, b"y" * 10, options=b"\x01\x01\x01\x02", seq=peer.snd)  # MSS kind, length byte missing
    assert core.counters.get("tcp_syn_in_connection") == 1
    assert core.counters.get("tcp_bad_options") == 1
    peer.send(ACK | PSH, b"fine")
    assert core.tcp_read(h, 100, clock.now) == b"fine"
    _end(core, clock)


def test_tcp_buffer_below_64k_caps_the_window(clock: Clock) -> None:
    """The right edge stops advancing until the window is down to the cap (it never moves left)."""
    core = make_core(clock, rx_buffer=16 << 10)
    peer = Peer(core, clock)
    h = peer.handshake()
    for _ in range(60):  # 84,000 bytes, each read at once
        peer.send(ACK, b"u" * 1400)
        assert core.tcp_read(h, 1 << 20, clock.now) == b"u" * 1400
    core.handle_timer(clock.tick(0.3))  # lwIP's delayed ACK
    ack = peer.recv()[-1]
    assert 0 < ack.window <= 16 << 10, "the window must settle at tcpBufferSize"
    _end(core, clock)


def test_unfinished_eager_handshakes_count_against_max_flows_and_time_out(clock: Clock) -> None:
    core = make_core(clock, eager=True, max_flows=2, handshake_timeout=2.0)
    peers = [Peer(core, clock, sport=41000 + i) for i in range(3)]
    for p in peers:
        p.send(SYN)
    replies = {s.dport: s.flags for s in map(parse, core.drain(clock.now))}
    assert replies == {41000: SYN | ACK, 41001: SYN | ACK, 41002: RST | ACK}
    assert core.counters["tcp_max_flows"] == 1
    for _ in range(12):  # the two SYN-ACKs are never answered
        core.handle_timer(clock.tick(0.25))
    assert core.counters["tcp_handshake_timeout"] == 2
    assert core.take_events() == [], "an eager flow is announced only once its handshake completed"
    assert core.stats()["lwip_active_pcbs"] == 0
    _end(core, clock)


def test_lazy_max_flows_counts_each_pending_syn_once(clock: Clock) -> None:
    core = make_core(clock, max_flows=2)
    peers = [Peer(core, clock, sport=42000 + i) for i in range(3)]
    for p in peers:
        p.send(SYN)
    opened = [e for p in peers for e in p.events if isinstance(e, TcpOpened)]
    assert len(opened) == 2 and core.counters["tcp_max_flows"] == 1
    _end(core, clock)


@pytest.mark.parametrize("flags", [SYN | FIN, SYN | RST, SYN | FIN | PSH, FIN, PSH, 0, FIN | PSH])
@pytest.mark.parametrize("eager", [False, True])
def test_nonsensical_flags_open_nothing_and_are_counted(clock: Clock, flags: int, eager: bool) -> None:
    """The shared check (``tunray.net.packet.BAD_TCP_FLAGS``); before, SYN+FIN opened a flow (and a dial)."""
    core = make_core(clock, eager=eager)
    peer = Peer(core, clock)
    peer.send(flags, b"x")
    assert peer.recv() == [] and peer.events == [] and not core.tcp and not core.by_key
    assert core.counters == {"tcp_bad_flags": 1}
    _end(core, clock)


def test_nonsensical_flags_inside_a_connection_are_dropped_too(clock: Clock) -> None:
    core = make_core(clock)
    peer = Peer(core, clock)
    h = peer.handshake()
    peer.send(FIN | PSH, b"not acked", seq=peer.snd)  # no ACK flag: not a segment of this connection
    assert core.tcp_read(h, 100, clock.now) is None and core.counters["tcp_bad_flags"] == 1
    peer.send(ACK | PSH, b"ok")
    assert core.tcp_read(h, 100, clock.now) == b"ok"
    _end(core, clock)


def _syn_from(core: LwipCore, clock: Clock, src: bytes, sport: int) -> Peer:
    peer = Peer(core, clock, sport=sport)
    peer.src = src
    peer.send(SYN, options=b"\x02\x04\x05\xb4")
    return peer


def test_a_source_over_its_half_open_share_gets_its_syns_dropped(clock: Clock) -> None:
    """Before: no half-open budget at all (every spoofed SYN held a flow slot and a dial)."""
    core = make_core(clock, max_half_open=3, max_half_open_per_source=2)
    burst = [_syn_from(core, clock, bytes((10, 1, 1, 1)), 40000 + i) for i in range(3)]
    assert all(len(p.events) == 1 for p in burst), "with room, a source may exceed its share (a burst)"
    flooder = _syn_from(core, clock, bytes((10, 1, 1, 1)), 40003)  # now the budget is full
    assert flooder.events == [] and flooder.recv() == [], "no state, no answer: its app retransmits"
    assert core.counters["tcp_half_open_dropped"] == 1 and core.stats()["tcp_half_open"] == 3
    other = _syn_from(core, clock, bytes((10, 9, 9, 9)), 50000)  # another source still gets a slot
    assert [type(e) for e in other.events] == [TcpReset, TcpOpened], other.events
    assert core.counters["tcp_half_open_evicted"] == 1
    core.tcp_abort(burst[0].events[0].handle, clock.now)  # type: ignore[union-attr]
    _end(core, clock)


def test_a_full_half_open_budget_evicts_the_oldest_and_completed_handshakes_leave_it(clock: Clock) -> None:
    core = make_core(clock, max_half_open=3, max_half_open_per_source=3)
    real = Peer(core, clock, sport=30000)
    real.src = bytes((10, 7, 7, 7))
    handle = real.handshake()  # a completed handshake holds no slot
    spoofed = [_syn_from(core, clock, bytes((10, 2, 0, i)), 40000) for i in range(3)]
    core.tcp_accept(spoofed[0].events[0].handle, clock.now)  # type: ignore[union-attr]
    assert spoofed[0].recv()[0].flags == SYN | ACK  # the oldest is in lwIP's SYN_RCVD by now
    spoofed.append(_syn_from(core, clock, bytes((10, 2, 0, 3)), 40000))
    evicted = [e for e in spoofed[3].events if isinstance(e, TcpReset)]
    assert len(evicted) == 1 and evicted[0].handle == spoofed[0].events[0].handle  # type: ignore[union-attr]
    assert core.counters["tcp_half_open_evicted"] == 1 and core.stats()["tcp_half_open"] == 3
    assert spoofed[0].recv() == [], "evicted quietly: no RST to a (likely spoofed) source"
    spoofed[0].send(ACK)  # a late ACK for it meets no connection: RST
    assert [seg.flags & RST for seg in spoofed[0].recv()] == [RST]
    real.send(ACK | PSH, b"still here")
    assert core.tcp_read(handle, 100, clock.now) == b"still here"
    core.tcp_abort(evicted[0].handle, clock.now)
    _end(core, clock)


def test_the_buffer_budget_bounds_unread_bytes_and_never_drops_acknowledged_ones(clock: Clock) -> None:
    """maxBufferedBytes for lwIP: a segment the budget has no room for is dropped before lwIP sees it
    (so it is never acknowledged) and taken when the app sends it again after a read (before: every
    connection held its 64 KiB window, however many there were)."""
    core = make_core(clock, max_buffered=20_000)
    peers = [Peer(core, clock, sport=41000 + i) for i in range(2)]
    handles = [p.handshake() for p in peers]
    first = peers[0].snd  # both start at the same sequence number
    chunk = b"a" * 1400
    for _ in range(8):  # 11,200 bytes each: the last round does not fit (19,600 + 1,400 > 20,000)
        for p in peers:
            p.send(ACK | PSH, chunk)
    assert core.stats()["lwip_rx_bytes"] == 19_600 and core.counters["tcp_buffer_budget_full"] == 1
    core.drain(clock.now)
    assert core.stats()["buffered_bytes"] == 19_600
    for h in handles:  # the refused segments were never taken: each read ends before them
        assert core.tcp_read(h, 100_000, clock.now) == chunk * 7
    core.drain(clock.now)
    for p in peers:  # the app sends them again; now they fit
        p.send(ACK | PSH, chunk, seq=first + 7 * 1400)
    for h in handles:
        assert core.tcp_read(h, 100_000, clock.now) == chunk
    core.drain(clock.now)
    assert core.stats()["buffered_bytes"] == 0
    _end(core, clock)
