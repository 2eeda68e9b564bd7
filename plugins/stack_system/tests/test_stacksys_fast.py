"""The C fast path (``fastpath.c``) against the pure-Python core, packet by packet.

Two cores see the same packets: ``twin`` through :meth:`SystemCore.feed` (the pure-Python
fast path and slow path), ``ours`` as the stack drives it with C (``FastTable.packet`` on a
reused buffer, notes applied, a declined packet to :meth:`SystemCore.feed_slow`).  Every
packet must come out as the same bytes, the counters and the table (half-open budget,
FIN flags, linger, last-packet times) must move the same way, and the rewritten packets are
summed again from scratch by the test kit's own checksum.  The last tests drive
``FastTable.pump`` over a real descriptor pair (``tunray.device.device_pair``).
"""

from __future__ import annotations

import errno
import os
import pathlib
import random
import socket
import struct
import subprocess

import pytest
from nat_world import (
    ACK,
    APP4,
    FAR4,
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
from tunray.device import device_pair
from tunray.net.packet import VNET_F_DATA_VALID, VNET_F_NEEDS_CSUM, VNET_LEN, pseudo_sum, vnet_header
from tunray.testing.stackclient import checksum, ipv4, ipv6, pseudo, tcp
from tunray_stack_system import fastpath
from tunray_stack_system.core import SystemConfig, SystemCore
from tunray_stack_system.nat import LINGER, PORT_FIRST


def make(*, vnet: bool = False, eager: bool = True, idle: float = 300.0) -> SystemCore:
    return SystemCore(SystemConfig(mtu=65535, vnet_hdr=vnet, eager=eager, max_flows=100, tcp_idle_timeout=idle),
                      SIDES)


def seg_packet(version: int, src: bytes, dst: bytes, sport: int, dport: int, flags: int, data: bytes = b"",
               seq: int = 1000, ack: int = 0, *, partial: bool = False) -> bytes:
    seg = bytearray(tcp(src, dst, sport, dport, seq, ack, flags, data))
    if partial:  # virtio NEEDS_CSUM: the field holds the pseudo-header sum, the kernel adds the rest
        seg[16:18] = (pseudo_sum(src, dst, TCP, len(seg)) % 0xFFFF).to_bytes(2, "big")
    return ipv4(src, dst, TCP, bytes(seg)) if version == 4 else ipv6(src, dst, TCP, bytes(seg))


class Pair:
    """``ours`` (C first, as the stack runs it) and ``twin`` (pure Python), fed the same packets."""

    def __init__(self, *, vnet: bool = False, eager: bool = True, idle: float = 300.0) -> None:
        self.ours, self.twin = make(vnet=vnet, eager=eager, idle=idle), make(vnet=vnet, eager=eager, idle=idle)
        self.buf = bytearray(b"\xee" * 70000)
        fast = self.ours.use_c(self.buf)
        assert fast is not None
        self.fast = fast

    def step(self, pkt: bytes, now: float, c_takes: bool | None = None) -> list[bytes]:
        """Feed *pkt* to both; *c_takes*: whether C must handle it (None: either way). Returns the output."""
        n = len(pkt)
        buf = self.buf
        buf[:] = b"\xee" * len(buf)
        buf[:n] = pkt
        counters = dict(self.ours.counters)
        took = self.fast.packet(buf, n, now)
        assert c_takes is None or took is c_takes, f"C took {pkt[:64]!r}: {took}"
        assert buf[n:n + 16] == b"\xee" * 16, "wrote past the packet"
        self.ours.apply_notes(now)
        self.twin.feed(pkt, now)
        expected = [bytes(x) for x in self.twin.drain(now)]
        if took:
            assert [bytes(buf[:n])] == expected
        else:
            assert bytes(buf[:n]) == pkt and self.ours.counters == counters, "a declined packet was changed or counted"
            self.ours.feed_slow(pkt, now)
            assert [bytes(x) for x in self.ours.drain(now)] == expected
        self.ours.take_events()
        self.twin.take_events()
        self.same()
        return expected

    def same(self) -> None:
        a, b = self.ours.nat, self.twin.nat
        assert a.by_key.keys() == b.by_key.keys()
        assert self.ours.counters == self.twin.counters
        assert len(self.fast) == sum(1 for e in a.by_key.values() if e.cref is not None)
        for k, e in a.by_key.items():
            t = b.by_key[k]
            assert (e.port, e.pending, e.fin_app, e.fin_kernel, e.linger_until) == \
                (t.port, t.pending, t.fin_app, t.fin_kernel, t.linger_until)
            assert (e in a.half_open) == (t in b.half_open)
        self.fast.refresh(a.by_key.values())
        assert {k: e.last for k, e in a.by_key.items()} == {k: e.last for k, e in b.by_key.items()}


def full_ok(p: bytes, ip: int = 0) -> tuple[bytes, bytes, int, int]:
    """(src, dst, sport, dport) of a rewritten plain packet whose checksums sum right from scratch."""
    if p[ip] >> 4 == 4:
        assert checksum(p[ip:ip + 20]) == 0
        src, dst, seg = p[ip + 12:ip + 16], p[ip + 16:ip + 20], p[ip + 20:]
    else:
        src, dst, seg = p[ip + 8:ip + 24], p[ip + 24:ip + 40], p[ip + 40:]
    assert checksum(pseudo(src, dst, TCP, len(seg)) + seg) == 0
    sport, dport = struct.unpack_from("!HH", seg)
    return src, dst, sport, dport


@pytest.mark.parametrize("vnet", ["plain", "vnet", "partial", "valid"])
@pytest.mark.parametrize("version", [4, 6])
def test_a_short_connection_through_c_matches_python_byte_for_byte(version: int, vnet: str) -> None:
    """SYN (Python: a new entry), SYN-ACK, the handshake ACK (C, noted: out of the half-open
    budget), data both ways (odd and 60 KB), FINs both ways (C, noted: the linger starts)."""
    app, far, tun, nxt = ends(version)
    pair = Pair(vnet=vnet != "plain")
    iplen = 20 if version == 4 else 40
    flags = {"plain": 0, "vnet": 0, "partial": VNET_F_NEEDS_CSUM, "valid": VNET_F_DATA_VALID}[vnet]

    def pkt(src: bytes, dst: bytes, sport: int, dport: int, fl: int, data: bytes = b"", seq: int = 1000,
            ack: int = 0) -> bytes:
        p = seg_packet(version, src, dst, sport, dport, fl, data, seq, ack, partial=vnet == "partial")
        if vnet == "plain":
            return p
        return vnet_header(flags, 0, 0, 0, iplen if flags & VNET_F_NEEDS_CSUM else 0, 16 if flags else 0) + p

    def up(fl: int, data: bytes = b"", seq: int = 1001) -> bytes:
        return pkt(app, far, 5555, 443, fl, data, seq, 78)

    def down(fl: int, data: bytes = b"", seq: int = 78) -> bytes:
        return pkt(tun, nxt, LPORT, PORT_FIRST, fl, data, seq, 1001)

    pair.step(pkt(app, far, 5555, 443, SYN), 1.0, False)
    assert len(pair.fast) == 1, "an eager entry is mirrored once its SYN passed"
    pair.step(down(SYN | ACK, seq=77), 1.1, True)
    [entry] = pair.ours.nat.by_key.values()
    assert entry in pair.ours.nat.half_open
    pair.step(up(ACK), 1.15, True)
    assert entry not in pair.ours.nat.half_open
    [data_up] = pair.step(up(ACK | PSH, bytes(range(256)) * 7 + b"x"), 1.2, True)
    [data_down] = pair.step(down(ACK | PSH, b"y" * 60000), 1.3, True)
    if vnet != "partial":
        skip = VNET_LEN if vnet != "plain" else 0
        assert full_ok(data_up, skip) == (nxt, tun, PORT_FIRST, LPORT)
        assert full_ok(data_down, skip) == (far, app, 443, 5555)
    pair.step(up(FIN | ACK, seq=1001 + 1793), 1.6, True)
    assert entry.fin_app and not entry.linger_until
    pair.step(down(FIN | ACK, seq=60078), 1.7, True)
    assert entry.linger_until == 1.7 + LINGER
    pair.step(up(ACK, seq=1001 + 1794), 1.8, True)  # the last ACK, while lingering
    pair.ours.handle_timer(1.7 + LINGER + 1)
    pair.twin.handle_timer(1.7 + LINGER + 1)
    pair.same()
    assert len(pair.fast) == 0 and not pair.ours.nat.by_key, "the linger freed the entry in C too"


@pytest.mark.parametrize("version", [4, 6])
def test_c_declines_what_python_must_judge(version: int) -> None:
    """Unknown flows, bad checksums on small segments, SYNs from the app, nonsensical flags,
    IP options and fragments: C leaves the buffer as it was and Python decides."""
    app, far, tun, nxt = ends(version)
    pair = Pair()
    pair.step(seg_packet(version, app, far, 5555, 443, SYN), 1.0, False)
    pair.step(seg_packet(version, app, far, 5555, 443, ACK, seq=1001, ack=1), 1.1, True)
    pair.step(seg_packet(version, app, far, 5556, 443, ACK, seq=1001), 1.2, False)  # no such flow: RST
    pair.step(seg_packet(version, tun, nxt, LPORT, PORT_FIRST + 1, ACK), 1.3, False)  # no such NAT port
    bad = seg_packet(version, app, far, 5555, 443, ACK, b"bad", seq=1001)
    bad = bad[:-4] + bytes([bad[-4] ^ 0xFF]) + bad[-3:]
    pair.step(bad, 1.4, False)
    assert pair.ours.counters["tcp_bad_checksum"] == 1
    big = seg_packet(version, app, far, 5555, 443, ACK, b"z" * 4000, seq=1001)
    big = big[:-4] + bytes([big[-4] ^ 0xFF]) + big[-3:]
    pair.step(big, 1.45, True)  # big data segments are left to the kernel's check: still wrong after
    pair.step(seg_packet(version, app, far, 5555, 443, SYN, seq=999), 1.5, False)  # a retransmitted SYN
    pair.step(seg_packet(version, app, far, 5555, 443, SYN | FIN, seq=999), 1.6, False)
    pair.step(seg_packet(version, app, far, 5555, 443, 0, seq=1001), 1.65, False)  # no flags at all
    if version == 4:
        frag = bytearray(seg_packet(4, app, far, 5555, 443, ACK, seq=1001))
        frag[6] |= 0x20  # more fragments
        frag[10:12] = b"\0\0"
        frag[10:12] = (0xFFFF - (sum(struct.unpack("!10H", bytes(frag[:20]))) % 0xFFFF)).to_bytes(2, "big")
        pair.step(bytes(frag), 1.7, False)


def test_resets_linger_and_a_new_syn_on_the_tuple_goes_to_python() -> None:
    pair = Pair()
    pair.step(seg_packet(4, APP4, FAR4, 5555, 443, SYN), 1.0, False)
    pair.step(seg_packet(4, TUN4, NEXT4, LPORT, PORT_FIRST, RST | ACK), 1.5, True)  # the kernel resets
    [old] = pair.ours.nat.by_key.values()
    assert old.linger_until == 1.5 + LINGER
    pair.step(seg_packet(4, APP4, FAR4, 5555, 443, SYN, seq=99999), 1.6, False)  # same tuple, new connection
    [new] = pair.ours.nat.by_key.values()
    assert new is not old and old.cref is None and new.cref is not None and len(pair.fast) == 1
    pair.step(seg_packet(4, APP4, FAR4, 5555, 443, RST, seq=100000), 1.7, False)  # half-open, no ACK: Python
    pair.step(seg_packet(4, TUN4, NEXT4, LPORT, new.port, ACK, b"late"), 1.8, True)


def test_lazy_entries_reach_c_only_once_their_syn_is_let_through() -> None:
    pair = Pair(eager=False)
    pair.step(seg_packet(4, APP4, FAR4, 5555, 443, SYN), 1.0, False)
    [entry] = pair.ours.nat.by_key.values()
    assert entry.pending and len(pair.fast) == 0
    pair.step(seg_packet(4, APP4, FAR4, 5555, 443, ACK, seq=1001), 1.1, False)  # held: Python's
    pair.ours.tcp_accept(entry.handle, 1.2)
    [twin_entry] = pair.twin.nat.by_key.values()
    pair.twin.tcp_accept(twin_entry.handle, 1.2)
    assert [bytes(x) for x in pair.ours.drain(1.2)] == [bytes(x) for x in pair.twin.drain(1.2)]
    assert len(pair.fast) == 1
    pair.step(seg_packet(4, TUN4, NEXT4, LPORT, entry.port, SYN | ACK, ack=1001), 1.3, True)
    pair.step(seg_packet(4, APP4, FAR4, 5555, 443, ACK, seq=1001, ack=1), 1.4, True)


def test_the_idle_sweep_sees_the_time_c_kept() -> None:
    pair = Pair(idle=10.0)
    pair.step(seg_packet(4, APP4, FAR4, 5555, 443, SYN), 0.0, False)
    [entry] = pair.ours.nat.by_key.values()
    pair.ours.handle_timer(0.0)
    pair.twin.handle_timer(0.0)
    late = bytearray(seg_packet(4, TUN4, NEXT4, LPORT, entry.port, ACK, b"x"))
    assert pair.fast.packet(late, len(late), 8.0)
    assert entry.last == 0.0, "C keeps the time (Python reads it for the sweep)"
    pair.ours.handle_timer(12.0)
    assert pair.ours.nat.by_key, "an entry C saw 4 s ago expired"
    pair.ours.handle_timer(30.0)
    assert not pair.ours.nat.by_key and len(pair.fast) == 0


def test_random_header_damage_never_makes_c_and_python_differ() -> None:
    """Bytes flipped in the headers of a live flow's packets (either way, plain and vnet):
    whatever C takes must be what Python sends, whatever it declines stays untouched."""
    rng = random.Random(1624)
    for vnet in (False, True):
        pair = Pair(vnet=vnet)
        prefix = vnet_header() if vnet else b""
        for version in (4, 6):
            app, far, tun, nxt = ends(version)
            pair.step(prefix + seg_packet(version, app, far, 5555, 443, SYN), 1.0, False)
        for i in range(1500):
            version = rng.choice((4, 6))
            app, far, tun, nxt = ends(version)
            if rng.random() < 0.5:
                base = seg_packet(version, app, far, 5555, 443, ACK, b"d" * rng.choice((0, 7, 600)), seq=1001)
            else:
                base = seg_packet(version, tun, nxt, LPORT, PORT_FIRST, ACK, b"e" * rng.choice((0, 9, 700)))
            p = bytearray(prefix + base)
            head = len(prefix) + (40 if version == 4 else 60)
            for _ in range(rng.choice((1, 1, 2, 3))):
                at = rng.randrange(head if rng.random() < 0.9 else len(p))
                p[at] = rng.randrange(256)
            pair.step(bytes(p), 2.0 + i / 1000)


def test_pump_reads_rewrites_and_writes_back_until_a_packet_for_python() -> None:
    """Over a real descriptor pair: C handles the known flow's packets, stops at the new SYN
    (left in the buffer with its length), and says AGAIN when nothing is left."""
    tun, app = device_pair(65535)
    try:
        pair = Pair()
        pair.step(seg_packet(4, APP4, FAR4, 5555, 443, SYN), 1.0, False)
        known = [seg_packet(4, APP4, FAR4, 5555, 443, ACK | PSH, bytes([i]) * (100 + i), seq=1001) for i in range(5)]
        new_syn = seg_packet(4, APP4, FAR4, 6666, 443, SYN)
        for p in [*known, new_syn, *known[:1]]:
            app.write(p)
        code, done, n, notes = pair.fast.pump(tun.fileno(), 64, 2.0)
        assert (code, done, n, notes) == (fastpath.SLOW, 6, len(new_syn), 1), "the handshake ACK was noted"
        assert bytes(pair.buf[:n]) == new_syn
        pair.ours.apply_notes(2.0)
        got = [app.read() for _ in known]
        for p, out in zip(known, got, strict=True):
            pair.twin.feed(p, 2.0)
            assert out == bytes(pair.twin.drain(2.0)[0])
        code, done, n, notes = pair.fast.pump(tun.fileno(), 64, 2.0)
        assert (code, done, notes) == (fastpath.AGAIN, 1, 0)
        assert app.read() is not None and app.read() is None
        app.write(known[0])
        assert pair.fast.pump(tun.fileno(), 1, 2.0)[:2] == (fastpath.BATCH, 1)
    finally:
        tun.close()
        app.close()


def test_pump_reports_the_end_of_the_device() -> None:
    tun, app = device_pair(1500)
    try:
        pair = Pair()
        app.close()
        assert pair.fast.pump(tun.fileno(), 8, 1.0)[0] == fastpath.EOF
    finally:
        tun.close()


def test_pump_hands_back_a_rewritten_packet_the_device_would_not_take() -> None:
    """A full device queue (EAGAIN on the write): C stops with WRITE, the rewritten packet
    still in the buffer for the driver's ``device.write`` (which counts the drop)."""
    tun, app = device_pair(65535)
    try:
        with socket.socket(fileno=os.dup(tun.fileno())) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # the kernel's minimum: a few packets
        pair = Pair()
        pair.step(seg_packet(4, APP4, FAR4, 5555, 443, SYN), 1.0, False)
        pair.step(seg_packet(4, APP4, FAR4, 5555, 443, ACK, seq=1001, ack=1), 1.1, True)
        data = seg_packet(4, APP4, FAR4, 5555, 443, ACK | PSH, b"q" * 1000, seq=1001, ack=1)
        for _ in range(64):
            app.write(data)
        code, done, n, _notes = pair.fast.pump(tun.fileno(), 512, 2.0)
        assert code == fastpath.WRITE and pair.fast.errno in (errno.EAGAIN, errno.ENOBUFS) and 0 < done < 64
        pair.twin.feed(data, 2.0)
        assert bytes(pair.buf[:n]) == bytes(pair.twin.drain(2.0)[0])
        assert not tun.write(pair.buf[:n]) and tun.write_drops == 1, "the device counts the drop"
    finally:
        tun.close()
        app.close()


def test_the_c_rewrite_reads_and_writes_only_inside_the_packet(tmp_path: pathlib.Path) -> None:
    """``fastpath_fuzz.c`` under AddressSanitizer and UBSan: millions of random and near-valid
    packets, each in an exact-size heap block, through ``sf_packet`` (some are rewritten)."""
    source = pathlib.Path(fastpath.__file__).with_name("fastpath.c")
    harness = pathlib.Path(__file__).with_name("fastpath_fuzz.c")
    binary = tmp_path / "fuzz"
    subprocess.run(["gcc", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                    f"-I{source.parent}", "-o", str(binary), str(harness)], check=True, timeout=120)
    done = subprocess.run([str(binary), "500000"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    rewritten = int(done.stdout.split()[1])
    assert rewritten > 1000, f"the fuzz hardly reached the rewrite: {done.stdout}"
