"""The system stack's sans-IO core: NAT rewrites checked against full checksums, table rules, lazy SYNs.

Packets are built with the test kit's independent stdlib builders
(:mod:`tunray.testing.stackclient`, a plain RFC 1071 loop) and every rewritten packet is
verified by summing it again from scratch, so the incremental (RFC 1624) updates are
checked against the definition.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from nat_world import (
    ACK,
    APP4,
    APP6,
    FAR4,
    FAR6,
    FIN,
    LPORT,
    NEXT4,
    PSH,
    RST,
    SIDES,
    SYN,
    TCP,
    TUN4,
    ends,
)
from tunray.config.errors import ConfigError
from tunray.net.packet import VNET_F_NEEDS_CSUM, VNET_LEN, pseudo_sum, sum_of, vnet_header
from tunray.stackcore import TcpOpened, TcpReset
from tunray.testing.stackclient import checksum, ipv4, ipv6, pseudo, tcp
from tunray_stack_system.core import SystemConfig, SystemCore
from tunray_stack_system.kernel import next_address, usable
from tunray_stack_system.nat import LINGER, PORT_FIRST, TcpNat, nat_key
from tunray_stack_system.stack import SystemStack


def key(src: bytes, sport: int, dst: bytes, dport: int) -> bytes:
    return nat_key(src, dst, struct.pack("!HH", sport, dport))


def core(*, eager: bool = True, vnet: bool = False, max_flows: int = 100, idle: float = 300.0) -> SystemCore:
    return SystemCore(SystemConfig(mtu=65535, vnet_hdr=vnet, eager=eager, max_flows=max_flows,
                                   tcp_idle_timeout=idle), SIDES)


def packet(version: int, src: bytes, dst: bytes, sport: int, dport: int, flags: int, data: bytes = b"",
           seq: int = 1000, ack: int = 0) -> bytes:
    seg = tcp(src, dst, sport, dport, seq, ack, flags, data)
    return ipv4(src, dst, TCP, seg) if version == 4 else ipv6(src, dst, TCP, seg)


def fields(p: bytes) -> tuple[bytes, bytes, int, int, int]:
    """(src, dst, sport, dport, flags) of a plain IP+TCP packet; asserts both checksums are right."""
    if p[0] >> 4 == 4:
        assert checksum(p[:20]) == 0, "IPv4 header checksum"
        src, dst, seg = p[12:16], p[16:20], p[20:]
    else:
        src, dst, seg = p[8:24], p[24:40], p[40:]
    assert checksum(pseudo(src, dst, TCP, len(seg)) + seg) == 0, "TCP checksum"
    sport, dport = struct.unpack_from("!HH", seg)
    return src, dst, sport, dport, seg[13]


@pytest.mark.parametrize("version", [4, 6])
def test_both_directions_are_rewritten_with_valid_checksums(version: int) -> None:
    app, far, tun, nxt = ends(version)
    c = core()
    c.feed(packet(version, app, far, 5555, 443, SYN), 1.0)
    [opened] = c.take_events()
    assert isinstance(opened, TcpOpened) and not opened.pending and opened.handle < 0
    assert (opened.src_ip, opened.src_port, opened.dst_ip, opened.dst_port) == (app, 5555, far, 443)
    [syn] = c.drain(1.0)
    src, dst, sport, dport, flags = fields(bytes(syn))
    assert (src, dst, dport, flags) == (nxt, tun, LPORT, SYN)
    assert sport == PORT_FIRST
    # a payload of odd length, so the update cannot lean on word alignment of the data
    c.feed(packet(version, app, far, 5555, 443, ACK | PSH, bytes(range(256)) * 7 + b"x"), 1.1)
    [data] = c.drain(1.1)
    assert fields(bytes(data))[:4] == (nxt, tun, PORT_FIRST, LPORT)
    c.feed(packet(version, tun, nxt, LPORT, sport, SYN | ACK, b"", 77, 1001), 1.2)
    [back] = c.drain(1.2)
    assert fields(bytes(back)) == (far, app, 443, 5555, SYN | ACK)
    assert c.counters.get("tcp_bad_checksum", 0) == 0


@pytest.mark.parametrize("version", [4, 6])
def test_a_partial_checksum_gets_only_the_address_delta(version: int) -> None:
    """With virtio NEEDS_CSUM the field holds the pseudo-header sum; the kernel adds the rest."""
    app, far, tun, nxt = ends(version)
    c = core(vnet=True)
    syn = packet(version, app, far, 5555, 443, SYN)
    c.feed(vnet_header() + syn, 1.0)
    c.drain(1.0)
    seg = bytearray(tcp(app, far, 5555, 443, 1001, 0, ACK, b"payload" * 100))
    seg[16:18] = (pseudo_sum(app, far, TCP, len(seg)) % 0xFFFF).to_bytes(2, "big")
    head = ipv4(app, far, TCP, bytes(seg)) if version == 4 else ipv6(app, far, TCP, bytes(seg))
    iplen = 20 if version == 4 else 40
    c.feed(vnet_header(VNET_F_NEEDS_CSUM, 0, 0, 0, iplen, 16) + head, 1.1)
    [out] = c.drain(1.1)
    out = bytes(out)[VNET_LEN:]
    new_seg = out[iplen:]
    assert int.from_bytes(new_seg[16:18], "big") == pseudo_sum(nxt, tun, TCP, len(new_seg)) % 0xFFFF
    assert struct.unpack_from("!HH", new_seg) == (PORT_FIRST, LPORT)
    # what the kernel will do with it: sum from csum_start with the field as is, complement
    full = bytearray(new_seg)
    total = (int.from_bytes(full[16:18], "big") + sum_of(bytes(full[:16]) + b"\0\0" + bytes(full[18:]))) % 0xFFFF
    full[16:18] = (0xFFFF - total).to_bytes(2, "big")
    assert checksum(pseudo(nxt, tun, TCP, len(full)) + bytes(full)) == 0


@pytest.mark.parametrize("vnet", [False, True], ids=["plain", "vnet"])
@pytest.mark.parametrize("version", [4, 6])
def test_feed_into_rewrites_in_place_exactly_as_feed_does(version: int, vnet: bool) -> None:
    """The driver's reused-buffer path: a packet the fast path takes is rewritten in the buffer
    to the very bytes :meth:`feed` would send, and the table moves the same way; anything
    else is refused with the buffer and the counters untouched, for :meth:`feed_slow` to handle
    as :meth:`feed` would."""
    app, far, tun, nxt = ends(version)
    ours, twin = core(vnet=vnet), core(vnet=vnet)
    prefix = vnet_header() if vnet else b""
    buf = bytearray(b"\xee" * 70000)

    def step(pkt: bytes, now: float, fast: bool | None) -> list[bytes]:
        """Feed *pkt* both ways; *fast*: whether feed_into must take it (None: set-up, either way)."""
        pkt = prefix + pkt
        n = len(pkt)
        buf[:] = b"\xee" * len(buf)
        buf[:n] = pkt
        counters = dict(ours.counters)
        took = ours.feed_into(buf, n, now)
        assert fast is None or took is fast, f"feed_into took {pkt[:60]!r}: {took}"
        assert buf[n:n + 16] == b"\xee" * 16, "wrote past the packet"
        twin.feed(pkt, now)
        expected = [bytes(x) for x in twin.drain(now)]
        if took:
            assert [bytes(buf[:n])] == expected
        else:
            assert bytes(buf[:n]) == pkt and ours.counters == counters, "a refused packet was changed or counted"
            ours.feed_slow(pkt, now)  # what the driver does with a refused packet
            assert [bytes(x) for x in ours.drain(now)] == expected
        assert ours.counters == twin.counters
        return expected

    step(packet(version, app, far, 5555, 443, SYN), 1.0, False)  # a new connection: the general path
    step(packet(version, tun, nxt, LPORT, PORT_FIRST, SYN | ACK, b"", 77, 1001), 1.1, True)
    step(packet(version, app, far, 5555, 443, ACK, b"", 1001, 78), 1.15, None)  # the handshake's last ACK
    step(packet(version, app, far, 5555, 443, ACK | PSH, bytes(range(256)) * 7 + b"x", 1001, 78), 1.2, True)
    step(packet(version, tun, nxt, LPORT, PORT_FIRST, ACK | PSH, b"y" * 60000, 78, 1001), 1.3, True)
    step(packet(version, tun, nxt, LPORT, PORT_FIRST + 1, ACK, b"", 78, 1001), 1.4, False)  # no such NAT port
    bad = packet(version, app, far, 5555, 443, ACK, b"bad")
    bad = bad[:-4] + bytes([bad[-4] ^ 0xFF]) + bad[-3:]  # a payload byte flipped: the TCP checksum is wrong
    step(bad, 1.5, False)  # a small segment's checksum is checked: the general path drops and counts it
    step(packet(version, app, far, 5555, 443, FIN | ACK), 1.6, True)
    step(packet(version, tun, nxt, LPORT, PORT_FIRST, FIN | ACK, b"", 60078, 1002), 1.7, True)
    [entry] = ours.nat.by_key.values()
    [twin_entry] = twin.nat.by_key.values()
    assert entry.linger_until == twin_entry.linger_until == 1.7 + LINGER


def test_nat_ports_skip_live_entries_and_wrap() -> None:
    nat = TcpNat(SIDES, max_entries=10, idle=300.0)
    first = nat.open(4, key(APP4, 1, FAR4, 80), 0.0)
    assert first is not None and first.port == PORT_FIRST
    nat._next[4] = 65535
    last = nat.open(4, key(APP4, 2, FAR4, 80), 0.0)
    assert last is not None and last.port == 65535
    wrapped = nat.open(4, key(APP4, 3, FAR4, 80), 0.0)
    assert wrapped is not None and wrapped.port == PORT_FIRST + 1, "wrapped onto a live port"
    six = nat.open(6, key(APP6, 1, FAR6, 80), 0.0)
    assert six is not None and six.port == PORT_FIRST, "each family has its own ports"
    assert nat.lookup_port(4, PORT_FIRST) is first and nat.lookup_port(6, PORT_FIRST) is six


def test_the_table_is_bounded_and_a_full_table_resets() -> None:
    c = core(max_flows=1)
    c.feed(packet(4, APP4, FAR4, 1, 80, SYN), 0.0)
    c.feed(packet(4, APP4, FAR4, 2, 80, SYN), 0.0)
    out = [fields(bytes(p)) for p in c.drain(0.0)]
    assert out[1] == (FAR4, APP4, 80, 2, RST | ACK)
    assert c.counters["tcp_max_flows"] == 1


def test_a_full_table_gives_the_oldest_lingering_slot_to_a_new_connection() -> None:
    """Ended connections linger (retransmissions) but are no flows: at a steady rate above
    max_flows / LINGER they must not make new connections be refused."""
    c = core(max_flows=2)
    c.feed(packet(4, APP4, FAR4, 1, 80, SYN), 0.0)
    c.feed(packet(4, APP4, FAR4, 2, 80, SYN), 0.0)
    first = c.nat.by_key[key(APP4, 1, FAR4, 80)]
    c.feed(packet(4, APP4, FAR4, 1, 80, RST, seq=1001), 0.5)  # the first ends: it lingers
    c.drain(0.5)
    assert first.linger_until
    c.feed(packet(4, APP4, FAR4, 3, 80, SYN), 1.0)  # the table is full: the lingering slot is taken
    out = [fields(bytes(p)) for p in c.drain(1.0)]
    assert [f[4] for f in out] == [SYN] and c.counters["tcp_linger_evicted"] == 1
    assert key(APP4, 1, FAR4, 80) not in c.nat.by_key and key(APP4, 3, FAR4, 80) in c.nat.by_key
    c.feed(packet(4, APP4, FAR4, 4, 80, SYN), 1.5)  # full of live connections: refused
    [rst] = [fields(bytes(p)) for p in c.drain(1.5)]
    assert rst[4] == RST | ACK and c.counters["tcp_max_flows"] == 1


@pytest.mark.parametrize("flags", [SYN | FIN, SYN | RST, SYN | FIN | PSH, FIN, PSH, 0, FIN | PSH])
@pytest.mark.parametrize("eager", [False, True])
def test_nonsensical_flags_open_no_entry_and_are_counted(flags: int, eager: bool) -> None:
    """The shared check (``tunray.net.packet.BAD_TCP_FLAGS``); before, SYN+FIN made an entry and a dial."""
    c = core(eager=eager)
    c.feed(packet(4, APP4, FAR4, 5555, 443, flags, b"x"), 1.0)
    assert c.drain(1.0) == [] and not c.take_events() and not c.nat.by_key
    assert c.counters == {"tcp_bad_flags": 1}


def test_nonsensical_flags_on_a_live_entry_never_reach_the_kernel() -> None:
    c = core()
    c.feed(packet(4, APP4, FAR4, 5555, 443, SYN), 1.0)
    c.drain(1.0)
    c.feed(packet(4, APP4, FAR4, 5555, 443, FIN | PSH, b"x", seq=1001), 1.1)
    assert c.drain(1.1) == [] and c.counters["tcp_bad_flags"] == 1
    c.feed(packet(4, APP4, FAR4, 5555, 443, ACK | PSH, b"x", seq=1001), 1.2)
    assert len(c.drain(1.2)) == 1


def test_lazy_syn_waits_for_accept_and_abort_answers_rst() -> None:
    c = core(eager=False)
    c.feed(packet(4, APP4, FAR4, 5555, 443, SYN, seq=1000), 1.0)
    [opened] = c.take_events()
    assert isinstance(opened, TcpOpened) and opened.pending
    assert c.drain(1.0) == [], "a lazy SYN went through before accept"
    c.feed(packet(4, APP4, FAR4, 5555, 443, SYN, seq=1000), 2.0)  # the app retransmits
    assert c.drain(2.0) == []
    c.tcp_accept(opened.handle, 2.5)
    [syn] = c.drain(2.5)
    assert fields(bytes(syn))[4] == SYN
    c.feed(packet(4, APP4, FAR4, 6666, 443, SYN, seq=5000), 3.0)
    [refused] = c.take_events()
    assert isinstance(refused, TcpOpened)
    c.tcp_abort(refused.handle, 3.1)
    [rst] = c.drain(3.1)
    assert fields(bytes(rst)) == (FAR4, APP4, 443, 6666, RST | ACK)
    assert struct.unpack_from("!I", rst, 28)[0] == 5001, "the RST must acknowledge the SYN"
    assert key(APP4, 6666, FAR4, 443) not in c.nat.by_key


def test_an_app_reset_while_pending_ends_the_handle() -> None:
    c = core(eager=False)
    c.feed(packet(4, APP4, FAR4, 5555, 443, SYN), 1.0)
    [opened] = c.take_events()
    c.feed(packet(4, APP4, FAR4, 5555, 443, RST, seq=1001), 1.1)
    assert c.take_events() == [TcpReset(opened.handle)]
    assert not c.nat.by_key


def test_fins_both_ways_free_the_entry_after_the_linger() -> None:
    c = core()
    c.feed(packet(4, APP4, FAR4, 5555, 443, SYN), 1.0)
    entry = c.nat.by_key[key(APP4, 5555, FAR4, 443)]
    c.feed(packet(4, APP4, FAR4, 5555, 443, FIN | ACK, seq=1001), 2.0)
    c.feed(packet(4, TUN4, NEXT4, LPORT, entry.port, FIN | ACK), 2.1)
    c.drain(2.1)
    assert c.next_timer() is not None
    c.handle_timer(2.1 + LINGER - 0.01)
    assert entry.key in c.nat.by_key, "freed before the linger"
    c.handle_timer(2.1 + LINGER)
    assert entry.key not in c.nat.by_key and c.nat.lookup_port(4, entry.port) is None
    # the app's late retransmission meets a closed port
    c.feed(packet(4, APP4, FAR4, 5555, 443, FIN | ACK, seq=1001, ack=9), 9.0)
    [rst] = c.drain(9.0)
    assert fields(bytes(rst)) == (FAR4, APP4, 443, 5555, RST)


def test_a_reset_frees_the_entry_and_a_new_syn_reuses_the_tuple() -> None:
    c = core()
    c.feed(packet(4, APP4, FAR4, 5555, 443, SYN), 1.0)
    old = c.nat.by_key[key(APP4, 5555, FAR4, 443)]
    c.feed(packet(4, TUN4, NEXT4, LPORT, old.port, RST | ACK), 1.5)
    c.take_events()
    c.feed(packet(4, APP4, FAR4, 5555, 443, SYN, seq=99999), 1.6)  # same tuple, new connection
    new = c.nat.by_key[key(APP4, 5555, FAR4, 443)]
    assert new is not old and new.port != old.port
    assert [type(e) for e in c.take_events()] == [TcpOpened]


def test_idle_entries_expire() -> None:
    c = core(idle=10.0)
    c.feed(packet(4, APP4, FAR4, 5555, 443, SYN), 0.0)
    c.handle_timer(0.0)
    c.feed(packet(4, APP4, FAR4, 5555, 443, ACK, seq=1001), 8.0)
    c.handle_timer(12.0)
    assert c.nat.by_key, "an entry active 4 s ago expired"
    t = c.next_timer()
    assert t is not None
    c.handle_timer(max(t, 18.1))
    c.handle_timer(30.0)
    assert not c.nat.by_key


def test_bad_checksums_are_counted_on_small_segments_and_left_to_the_kernel_on_big_ones() -> None:
    c = core()
    c.feed(ipv4(APP4, FAR4, TCP, tcp(APP4, FAR4, 1, 80, 1, 0, SYN, b"", bad_csum=True)), 0.0)
    assert c.counters["tcp_bad_checksum"] == 1 and not c.nat.by_key
    c.feed(packet(4, APP4, FAR4, 1, 80, SYN), 0.0)
    c.drain(0.0)
    big = ipv4(APP4, FAR4, TCP, tcp(APP4, FAR4, 1, 80, 1, 0, ACK, b"z" * 4000, bad_csum=True))
    c.feed(big, 0.1)
    [out] = c.drain(0.1)
    seg = bytes(out)[20:]
    assert checksum(pseudo(NEXT4, TUN4, TCP, len(seg)) + seg) != 0, "a bad checksum became good"


def test_segments_without_entry_and_bad_destinations() -> None:
    c = core()
    c.feed(packet(4, APP4, FAR4, 1, 80, ACK, seq=5, ack=77), 0.0)
    [rst] = c.drain(0.0)
    assert fields(bytes(rst)) == (FAR4, APP4, 80, 1, RST)
    c.feed(packet(4, APP4, FAR4, 1, 80, RST, seq=5), 0.0)
    assert c.drain(0.0) == []
    c.feed(packet(4, APP4, bytes((224, 0, 0, 1)), 1, 80, SYN), 0.0)
    c.feed(packet(4, TUN4, NEXT4, LPORT, 12345, ACK), 0.0)  # the kernel, for an entry that is gone
    assert c.drain(0.0) == []
    assert c.counters["tcp_bad_destination"] == 1 and c.counters["tcp_nat_unknown_port"] == 1


def test_a_family_without_addressing_resets() -> None:
    c = SystemCore(SystemConfig(eager=True), {4: SIDES[4]})
    c.feed(packet(6, APP6, FAR6, 1, 80, SYN), 0.0)
    [rst] = c.drain(0.0)
    assert fields(bytes(rst))[4] == RST | ACK and c.counters["tcp_no_nat_address"] == 1


# --- addressing and config ---------------------------------------------------------------------------


@pytest.mark.parametrize(("iface", "peer"), [
    ("10.0.0.1/30", "10.0.0.2"), ("10.0.0.2/30", "10.0.0.1"), ("10.0.0.0/31", "10.0.0.1"),
    ("172.18.0.1/24", "172.18.0.2"), ("fd00::1/126", "fd00::2"), ("fd00::1/127", "fd00::"),
    ("10.0.0.1/32", None), ("fd00::1/128", None), ("10.0.0.254/24", "10.0.0.253"),
])
def test_next_address(iface: str, peer: str | None) -> None:
    got = next_address(ipaddress.ip_interface(iface))
    assert (str(got) if got else None) == peer


def test_check_link_names_the_gateway_entry() -> None:
    gw = [ipaddress.ip_interface("10.0.0.1/30"), ipaddress.ip_interface("fd00::1/128")]
    with pytest.raises(ConfigError) as err:
        SystemStack.check_link(gw, "inbounds[0].settings.gateway")
    assert "inbounds[0].settings.gateway[1]" in str(err.value) and "second address" in str(err.value)
    with pytest.raises(ConfigError, match="needs an address"):
        SystemStack.check_link([], "inbounds[0].settings.gateway")
    SystemStack.check_link(gw[:1], "inbounds[0].settings.gateway")
    assert set(usable(gw)) == {4}


def test_tun_config_refuses_a_gateway_without_room_and_defaults_the_mtu() -> None:
    from tunray.config.model import build_config
    from tunray.plugin.manager import PluginManager
    from tunray_tun.settings import effective_mtu

    registry = PluginManager().registry

    def config(settings: dict[str, object]) -> object:
        return build_config({"inbounds": [{"protocol": "tun", "settings": settings}],
                             "outbounds": [{"protocol": "freedom"}]}, registry)

    with pytest.raises(ConfigError) as err:
        config({"stack": "system", "gateway": ["10.0.0.1/32"]})
    assert "inbounds[0].settings.gateway[0]" in str(err.value)
    with pytest.raises(ConfigError, match=r"inbounds\[0\]\.settings\.gateway"):
        config({"stack": "mixed"})
    ok = config({"stack": "system", "gateway": ["10.0.0.1/30"]})
    s = ok.inbounds[0].settings  # type: ignore[attr-defined]
    assert effective_mtu(SystemStack, s) == 65535, "no user MTU: the system stack's 65535"
    s9000 = config({"stack": "system", "gateway": ["10.0.0.1/30"], "mtu": 9000}).inbounds[0].settings  # type: ignore[attr-defined]
    assert effective_mtu(SystemStack, s9000) == 9000
    python = config({"gateway": ["10.0.0.1/32"]}).inbounds[0].settings  # type: ignore[attr-defined]
    assert effective_mtu(registry.stacks["python"], python) == 1500, "other stacks keep the inbound's 1500"


@pytest.mark.parametrize("vnet", [False, True])
def test_truncated_and_garbage_packets_are_counted_never_raised(vnet: bool) -> None:
    import random

    c = core(vnet=vnet)
    prefix = vnet_header() if vnet else b""
    rng = random.Random(5)
    valid_syn = packet(4, APP4, FAR4, 5555, 443, SYN)
    samples = [b"", b"\x45", b"\x45" * 9, b"\x60" * 30, valid_syn[:39], valid_syn[:20]]
    samples += [bytes((0x45,)) + rng.randbytes(rng.randrange(0, 80)) for _ in range(300)]
    samples += [bytes((0x60,)) + rng.randbytes(rng.randrange(0, 80)) for _ in range(300)]
    for s in samples:
        c.feed(prefix + s if vnet or s else s, 0.0)
    assert sum(c.counters.values()) >= len(samples) - 5, c.counters
    assert not c.nat.by_key


def test_parse_udp_reasons() -> None:
    from tunray.net.packet import parse_udp
    from tunray.testing.stackclient import udp_dgram

    good = udp_dgram(APP4, FAR4, 4000, 53, b"query")
    assert parse_udp(4, APP4, FAR4, good, 0, len(good), False) == (4000, 53, len(good))
    assert parse_udp(4, APP4, FAR4, good[:7], 0, 7, False) == "udp_truncated"
    long = udp_dgram(APP4, FAR4, 4000, 53, b"query", length=200)
    assert parse_udp(4, APP4, FAR4, long, 0, len(long), False) == "udp_bad_length"
    bad = udp_dgram(APP4, FAR4, 4000, 53, b"query", csum=0x1234)
    assert parse_udp(4, APP4, FAR4, bad, 0, len(bad), False) == "udp_bad_checksum"
    assert parse_udp(4, APP4, FAR4, bad, 0, len(bad), True) == (4000, 53, len(bad)), "the device vouched for it"
    none4 = udp_dgram(APP4, FAR4, 4000, 53, b"query", csum=0)
    assert parse_udp(4, APP4, FAR4, none4, 0, len(none4), False) == (4000, 53, len(none4))
    none6 = udp_dgram(APP6, FAR6, 4000, 53, b"query", csum=0)
    assert parse_udp(6, APP6, FAR6, none6, 0, len(none6), False) == "udp_bad_checksum"


def _half_open_core(eager: bool, total: int, per_source: int) -> SystemCore:
    return SystemCore(SystemConfig(mtu=65535, eager=eager, max_flows=100, max_half_open=total,
                                   max_half_open_per_source=per_source), SIDES)


@pytest.mark.parametrize("eager", [False, True])
def test_a_source_over_its_half_open_share_gets_its_syns_dropped(eager: bool) -> None:
    """Before: no half-open budget (every spoofed SYN held a NAT entry and a dial until idle expiry)."""
    c = _half_open_core(eager, 3, 2)
    other = bytes((10, 9, 9, 9))
    flooder = bytes((10, 1, 1, 1))
    for port in (40000, 40001, 40002, 40003):  # with room a burst may exceed the share; then it is full
        c.feed(packet(4, flooder, FAR4, port, 443, SYN, seq=7000), 1.0 + port / 1e6)
    c.feed(packet(4, other, FAR4, 5000, 443, SYN), 1.5)
    evs = c.take_events()
    opened = [(e.src_ip, e.src_port) for e in evs if isinstance(e, TcpOpened)]
    assert opened == [(flooder, 40000), (flooder, 40001), (flooder, 40002), (other, 5000)], opened
    assert key(flooder, 40003, FAR4, 443) not in c.nat.by_key and key(other, 5000, FAR4, 443) in c.nat.by_key
    assert c.counters["tcp_half_open_dropped"] == 1 and c.counters["tcp_half_open_evicted"] == 1
    assert c.stats()["tcp_half_open"] == 3
    out = [fields(bytes(p)) for p in c.drain(2.0)]
    assert not [f for f in out if 40003 in (f[2], f[3])], "a dropped SYN is not answered"


@pytest.mark.parametrize("eager", [False, True])
def test_a_full_half_open_budget_forgets_the_oldest_quietly(eager: bool) -> None:
    c = _half_open_core(eager, 2, 2)
    for i in range(3):
        c.feed(packet(4, bytes((10, 4, 0, i)), FAR4, 7000, 443, SYN), 1.0 + i / 10)
    evs = c.take_events()
    first = next(e.handle for e in evs if isinstance(e, TcpOpened) and e.src_ip == bytes((10, 4, 0, 0)))
    assert TcpReset(first) in evs and key(bytes((10, 4, 0, 0)), 7000, FAR4, 443) not in c.nat.by_key
    assert c.counters["tcp_half_open_evicted"] == 1
    assert not [p for p in c.drain(2.0) if fields(bytes(p))[4] & RST], "no RST to the (likely spoofed) source"


def test_the_handshake_ack_takes_a_connection_out_of_the_half_open_budget() -> None:
    c = _half_open_core(True, 2, 2)
    c.feed(packet(4, APP4, FAR4, 5555, 443, SYN, seq=1000), 1.0)
    assert c.stats()["tcp_half_open"] == 1
    c.feed(packet(4, APP4, FAR4, 5555, 443, ACK, seq=1001, ack=1), 1.1)  # the app completes its handshake
    assert c.stats()["tcp_half_open"] == 0
    for port in (6000, 6001, 6002):  # a full budget evicts the oldest half-open one, never the established
        c.feed(packet(4, bytes((10, 3, 0, port - 6000)), FAR4, port, 443, SYN), 2.0 + port / 1e6)
    assert key(APP4, 5555, FAR4, 443) in c.nat.by_key
    assert c.counters["tcp_half_open_evicted"] == 1 and c.stats()["tcp_half_open"] == 2
