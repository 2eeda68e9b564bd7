"""Golden packets, UDP full-cone, ICMP echo, checksums, and fuzzing of the sans-IO core."""

from __future__ import annotations

import os
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from stackpy_wire import ACK, SYN, decode, icmp_echo, ip_bytes, ref_checksum, syn_opts, tcp, udp
from tunray import stackcore as events
from tunray.net.packet import VNET_LEN, finish, sum_of, vnet_header
from tunray_stack_python.core import Core, CoreConfig

# SYN from 10.0.0.2:40000 to 1.2.3.4:80 (MSS 1460, SACK, TS 111, WS 7), ISS 0x01020304, now = 5 s.
GOLDEN_SYN_ACK = bytes.fromhex(
    "450000400000400040062cb1010203040a000002"  # IPv4: DF, TTL 64, from the SYN's destination
    "00509c4001020304000003e9b012ffff6f6c0000"  # TCP: SYN|ACK, ack 1001, window 65535
    "020405b4010104020101080a000013880000006f01030307"  # MSS 1460, SACK-OK, TS 5000/111, WS 7
)
GOLDEN_ECHO_REPLY_V4 = bytes.fromhex("450000200000400040012cd6010203040a000002000021270007000170696e67")
GOLDEN_ECHO_REPLY_V6 = bytes.fromhex(
    "60000000000c3a4020010db8000000000000000000000001fd770000000000000000000000000002"
    "810074ac0007000170696e67"
)


def golden_core() -> Core:
    return Core(CoreConfig(), isn=lambda: 0x01020304)


def test_golden_syn_ack() -> None:
    core = golden_core()
    core.feed(tcp("10.0.0.2", "1.2.3.4", 40000, 80, 1000, 0, SYN, 64240, syn_opts(1460, 7, True, (111, 0))), 5.0)
    ev = core.events[0]
    assert isinstance(ev, events.TcpOpened) and ev.pending
    assert (ev.src_ip, ev.src_port, ev.dst_ip, ev.dst_port) == (ip_bytes("10.0.0.2"), 40000, ip_bytes("1.2.3.4"), 80)
    core.tcp_accept(ev.handle, 5.0)
    (packet,) = core.drain(5.0)
    assert packet == GOLDEN_SYN_ACK
    decode(packet)  # checksums verified by the reference implementation


def test_golden_echo_replies() -> None:
    core = golden_core()
    core.feed(icmp_echo("10.0.0.2", "1.2.3.4", 7, 1, b"ping"), 5.0)
    core.feed(icmp_echo("fd77::2", "2001:db8::1", 7, 1, b"ping"), 5.0)
    v4, v6 = core.drain(5.0)
    assert v4 == GOLDEN_ECHO_REPLY_V4 and v6 == GOLDEN_ECHO_REPLY_V6
    assert decode(v4).payload[0] == 0 and decode(v6).payload[0] == 129


def test_other_icmp_dropped_and_counted() -> None:
    core = golden_core()
    msg = struct.pack("!BBHI", 3, 1, 0, 0) + b"x" * 8
    msg = msg[:2] + struct.pack("!H", ref_checksum(msg)) + msg[4:]
    from stackpy_wire import ip_packet

    core.feed(ip_packet("10.0.0.2", "1.2.3.4", 1, msg), 1.0)
    assert core.drain(1.0) == [] and core.counters["icmp_ignored"] == 1


def test_udp_full_cone_two_destinations() -> None:
    core = Core(CoreConfig(udp_queue_packets=3))
    core.feed(udp("10.0.0.2", "8.8.8.8", 5353, 53, b"q1"), 1.0)
    core.feed(udp("10.0.0.2", "1.1.1.1", 5353, 53, b"q2"), 1.0)
    opened = [e for e in core.events if isinstance(e, events.UdpOpened)]
    assert len(opened) == 1
    h = opened[0].handle
    assert (opened[0].dst_ip, opened[0].dst_port) == (ip_bytes("8.8.8.8"), 53)
    flow = core.udp_handles[h]
    assert list(flow.queue) == [(b"q1", ip_bytes("8.8.8.8"), 53), (b"q2", ip_bytes("1.1.1.1"), 53)]
    assert core.udp_send(h, b"a2", ip_bytes("1.1.1.1"), 53, 1.0)
    assert core.udp_send(h, b"a1", ip_bytes("8.8.8.8"), 53, 1.0)
    r2, r1 = (decode(p) for p in core.drain(1.0))
    assert (r2.src, r2.sport, r2.dst, r2.dport, r2.payload) == ("1.1.1.1", 53, "10.0.0.2", 5353, b"a2")
    assert (r1.src, r1.payload) == ("8.8.8.8", b"a1")
    for i in range(3):
        core.feed(udp("10.0.0.2", "8.8.8.8", 5353, 53, bytes([i])), 1.0)
    assert len(flow.queue) == 3 and core.counters["udp_queue_full"] == 2
    assert [core.udp_recv(h) for _ in range(4)] == [
        (b"q1", ip_bytes("8.8.8.8"), 53), (b"q2", ip_bytes("1.1.1.1"), 53), (b"\0", ip_bytes("8.8.8.8"), 53), None
    ]
    core.events.clear()
    core.feed(udp("10.0.0.2", "8.8.8.8", 5353, 53, b"late"), 1.0)
    assert core.take_events() == [events.UdpReadable(h)]  # armed by the udp_recv that returned None


def test_udp_v6_and_idle_timeout() -> None:
    core = Core(CoreConfig(udp_idle_timeout=10.0))
    core.feed(udp("fd77::2", "2001:db8::53", 7000, 53, b"hi"), 1.0)
    (opened,) = core.events
    assert isinstance(opened, events.UdpOpened)
    assert core.udp_send(opened.handle, b"yo", ip_bytes("2001:db8::99"), 53, 1.0)
    reply = decode(core.drain(1.0)[0])
    assert reply.src == "2001:db8::99" and reply.payload == b"yo"
    core.events.clear()
    t = core.next_timer()
    assert t == 11.0
    core.handle_timer(t)
    assert not core.udp and core.events == [events.UdpClosed(opened.handle)]
    # Held until released: what was queued before the end can still be read.
    assert core.udp_recv(opened.handle) == (b"hi", ip_bytes("2001:db8::53"), 53)
    assert core.udp_recv(opened.handle) is None
    core.udp_close(opened.handle, t)
    assert not core.udp_handles


def test_vnet_header_output_uses_partial_checksum() -> None:
    core = Core(CoreConfig(vnet_hdr=True))
    core.feed(vnet_header() + udp("10.0.0.2", "8.8.8.8", 5353, 53, b"q"), 1.0)
    handle = next(e.handle for e in core.events if isinstance(e, events.UdpOpened))
    core.udp_send(handle, b"answer", ip_bytes("8.8.8.8"), 53, 1.0)
    (packet,) = core.drain(1.0)
    flags, _gso, _hl, _gs, start, offset = struct.unpack_from("<BBHHHH", packet)
    assert flags == 1 and start == 20 and offset == 6
    body = bytearray(packet[VNET_LEN:])
    # Finish the checksum as the kernel would: complement of the sum from csum_start.
    body[26:28] = b"\0\0"
    partial_field = struct.unpack_from("!H", packet, VNET_LEN + 26)[0]
    total = sum_of(bytes(body[20:])) + partial_field
    body[26:28] = struct.pack("!H", finish(total))
    decode(bytes(body))


@given(st.binary(min_size=1, max_size=3000))
def test_checksum_matches_reference(data: bytes) -> None:
    assert finish(sum_of(data)) % 0xFFFF == ref_checksum(data) % 0xFFFF


def _valid_packets() -> list[bytes]:
    return [
        tcp("10.0.0.2", "1.2.3.4", 1, 2, 3, 0, SYN, options=syn_opts(ts=(1, 0))),
        tcp("fd77::2", "2001:db8::1", 1, 2, 3, 4, ACK, payload=b"data"),
        udp("10.0.0.2", "1.2.3.4", 1, 2, b"x" * 40),
        icmp_echo("fd77::2", "2001:db8::1", 1, 1, b"p"),
    ]


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 3), st.integers(0, 200), st.binary(max_size=8), st.booleans())
def test_truncated_or_mangled_packets_never_raise(which: int, cut: int, junk: bytes, vnet: bool) -> None:
    core = Core(CoreConfig(vnet_hdr=vnet))
    packet = _valid_packets()[which]
    mangled = packet[: max(len(packet) - cut, 0)] + junk
    if vnet:
        mangled = vnet_header() + mangled
    core.feed(mangled, 1.0)
    core.drain(1.0)
    core.handle_timer(2.0)
    # A fresh core accounts for every packet: a drop reason or what it created.
    assert sum(core.counters.values()) >= 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_are_dropped_and_counted(data: bytes) -> None:
    core = Core(CoreConfig())
    core.feed(data, 1.0)
    core.drain(1.0)
    assert sum(core.counters.values()) >= 1


def test_bad_checksum_is_counted() -> None:
    core = Core(CoreConfig())
    packet = bytearray(tcp("10.0.0.2", "1.2.3.4", 1, 2, 3, 0, SYN))
    packet[-1] ^= 0xFF
    core.feed(bytes(packet), 1.0)
    assert core.counters == {"tcp_bad_checksum": 1} and not core.conns


def test_large_segment_checksum_fast_path() -> None:
    core = Core(CoreConfig(mtu=65535))
    payload = os.urandom(65000)
    core.feed(tcp("10.0.0.2", "1.2.3.4", 1, 2, 3, 0, ACK, payload=payload), 1.0)
    assert core.counters == {"tcp_no_connection": 1, "tcp_rst_sent": 1}
