"""Hypothesis: arbitrary app segments and driver operations against one lwIP connection.

Debian builds lwIP with assertions that abort the process, so the property is first of
all "the process survives"; then the stackcore rules hold (at most one end event per
handle, reads after the end return ``b""``), and every pcb, pbuf and glue connection is
released at the end.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lwip_peer import ACK, Clock, Peer, make_core
from tunray.stackcore import SendClosed, TcpClosed, TcpReset

FLAGS = st.sampled_from([0x10, 0x18, 0x11, 0x19, 0x04, 0x14, 0x02, 0x12, 0x01, 0x00, 0x3F])
OPTIONS = st.sampled_from([b"", b"\x01\x01\x01\x00", b"\x02\x04\x05\xb4", b"\x08\x0a" + bytes(8) + b"\x01\x01",
                           b"\x05\x0a" + bytes(8) + b"\x01\x01", b"\x03\x03\x07\x00", b"\x01\x01\x01\x02"])
SEGMENT = st.tuples(st.just("seg"), FLAGS, st.integers(-70_000, 70_000), st.integers(0, 3000), OPTIONS)
OP = st.one_of(
    SEGMENT,
    st.tuples(st.just("read"), st.integers(1, 70_000)),
    st.tuples(st.just("write"), st.integers(1, 300_000)),
    st.tuples(st.just("shutdown")),
    st.tuples(st.just("timer"), st.floats(0.01, 3.0)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OP, max_size=40), close=st.sampled_from(["close", "abort"]))
def test_arbitrary_segments_and_operations(ops: list[tuple[Any, ...]], close: str) -> None:
    clock = Clock()
    core = make_core(clock)
    peer = Peer(core, clock)
    h = peer.handshake()
    ended = False
    for op in ops:
        if op[0] == "seg":
            _, flags, offset, size, options = op
            peer.send(flags | (ACK if flags & 0x10 else 0), bytes(size), options=options,
                      seq=(peer.snd + offset) & 0xFFFFFFFF)
        elif op[0] == "read":
            data = core.tcp_read(h, op[1], clock.now)
            if ended:
                assert data is not None
        elif op[0] == "write":
            try:
                core.tcp_write(h, bytes(op[1]), clock.now)
            except SendClosed:
                pass
        elif op[0] == "shutdown":
            core.tcp_shutdown(h, clock.now)
        else:
            core.handle_timer(clock.tick(op[1]))
        peer.recv()
        ends = [e for e in peer.events if isinstance(e, (TcpClosed, TcpReset)) and e.handle == h]
        assert len(ends) <= 1, peer.events
        ended = bool(ends)
    if close == "close":
        core.tcp_close(h, clock.now)
    else:
        core.tcp_abort(h, clock.now)
    core.reset_all(clock.now)
    core.drain(clock.now)
    core.take_events()
    stats = core.stats()
    assert (stats["lwip_conns"], stats["lwip_active_pcbs"], stats["lwip_time_wait_pcbs"]) == (0, 0, 0), stats
