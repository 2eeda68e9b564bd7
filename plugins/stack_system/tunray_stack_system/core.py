"""``SystemCore``: the sans-IO half of the ``system`` and ``mixed`` stacks.

TCP goes through :class:`~tunray_stack_system.nat.TcpNat` (headers rewritten, packets
handed back to the device for the kernel's TCP); everything else goes to a UDP/ICMP part:
:class:`tunray.stackudp.UdpTable` (full-cone, shared with the other stacks) and ICMP echo for ``system``, or another stack's whole core
(the Python stack's, for ``mixed``) that never sees a TCP packet.

Events.  A new NATed connection raises :class:`~tunray.stackcore.TcpOpened` with a
negative handle (``pending`` while its SYN is held); its bytes never pass through the core
(the stack pairs the handle with the kernel socket the listener accepts).  The core raises
:class:`~tunray.stackcore.TcpReset` for a handle whose entry ended before that socket came
(the app reset or gave up), and nothing else for NAT handles.  ``tcp_accept`` lets a held
SYN through, ``tcp_abort`` refuses it (RST) and releases the handle; the ``tcp_*`` byte
operations are not used for NAT handles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tunray.halfopen import DROPPED, EVICTED, HalfOpenTable
from tunray.net.packet import (
    BAD_TCP_FLAGS,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    VNET_F_DATA_VALID,
    VNET_F_NEEDS_CSUM,
    VNET_LEN,
    echo_reply,
    parse_ip,
    pseudo_sum,
    sum_of,
    valid,
    vnet_header,
)
from tunray.stackcore import CoreEvent, StackCore, TcpOpened, TcpReset
from tunray.stackudp import UdpTable

from tunray_stack_system.fastpath import NOTE_APP, NOTE_ESTABLISHED, FastTable, load
from tunray_stack_system.nat import (
    ACK,
    FIN,
    RST,
    SYN,
    VERIFY_MAX,
    NatEntry,
    Side,
    TcpNat,
    nat_key,
    rewrite,
    rst_for,
)

_DROP_DST_V4 = (b"\x00", b"\x7f")  # "this network", loopback
_FROM = int.from_bytes


@dataclass(slots=True)
class SystemConfig:
    mtu: int = 65535
    vnet_hdr: bool = False
    eager: bool = False
    tcp_idle_timeout: float = 300.0
    udp_idle_timeout: float = 60.0
    udp_queue_packets: int = 1024
    max_flows: int = 65536
    max_half_open: int = 256  # handshakes in progress (tunray.halfopen), all and per source address
    max_half_open_per_source: int = 64
    handshake_timeout: float = 4.0


class SystemCore:
    """See the module docstring.  *inner*: the core for non-TCP packets (``mixed``), else our own UDP."""

    def __init__(self, config: SystemConfig, sides: dict[int, Side], inner: StackCore | None = None) -> None:
        self.config = config
        self._counters: dict[str, int] = {}
        self.events: list[CoreEvent] = []
        self.out: list[bytes] = []
        self.nat = TcpNat(sides, max_entries=config.max_flows, idle=config.tcp_idle_timeout,
                          half_open=HalfOpenTable(config.max_half_open, config.max_half_open_per_source,
                                                  config.handshake_timeout))
        self.inner = inner
        self._udp_handle = 0  # UDP handles count up, NAT handles down
        self.udp = UdpTable(mtu=config.mtu, vnet_hdr=config.vnet_hdr, idle_timeout=config.udp_idle_timeout,
                            queue_packets=config.udp_queue_packets, count=self.count,
                            events=lambda ev: self.events.append(ev), out=lambda p: self.out.append(p),
                            new_handle=self._new_udp_handle)
        self._prefix = vnet_header() if config.vnet_hdr else b""
        self._vnet = config.vnet_hdr
        side4, side6 = sides.get(4), sides.get(6)
        # what a packet from the kernel's listener starts its table key with (src, dst, sport)
        self._reply4 = side4.local + side4.peer + side4.port.to_bytes(2, "big") if side4 is not None else b"-"
        self._reply6 = side6.local + side6.peer + side6.port.to_bytes(2, "big") if side6 is not None else b"-"
        self.fast: FastTable | None = None  # the C fast path, once a driver asked for it (use_c)

    def _new_udp_handle(self) -> int | None:
        if len(self.udp) >= self.config.max_flows:
            return None
        self._udp_handle += 1
        return self._udp_handle

    def count(self, what: str, n: int = 1) -> None:
        self._counters[what] = self._counters.get(what, 0) + n

    @property
    def counters(self) -> dict[str, int]:
        return self._counters

    @counters.setter
    def counters(self, counters: dict[str, int]) -> None:
        """The driver hands its own dict over (``StackDriver.attach``); every part counts into it."""
        self._counters = counters
        if self.inner is not None:
            self.inner.counters = counters

    def use_c(self, buf: bytearray) -> FastTable | None:
        """Mirror usable entries into the C fast path that reads into *buf*; None if it is not built.

        Call before the first packet.  The driver then runs :meth:`FastTable.pump
        <tunray_stack_system.fastpath.FastTable.pump>`, applies :meth:`apply_notes` after
        each call and hands a declined packet to :meth:`feed_slow`.
        """
        assert self.fast is None, "one C table per core: NatEntry.cref points into it"
        if load() is None:
            return None
        self.fast = FastTable(self.nat.sides, max_entries=self.config.max_flows, vnet=self._vnet, buf=buf)
        self.nat.mirror = self.fast
        return self.fast

    def _usable(self, entry: NatEntry) -> None:
        """*entry*'s SYN has passed: the C fast path may take its packets from now on."""
        if self.fast is not None:
            self.fast.add(entry, entry in self.nat.half_open)

    def apply_notes(self, now: float) -> None:
        """What the C fast path passed that the table must know: handshake ACKs, FINs and RSTs."""
        assert self.fast is not None
        nat = self.nat
        for handle, kind, flags in self.fast.notes():
            entry = nat.by_handle.get(handle)
            if entry is None:
                continue
            if kind == NOTE_ESTABLISHED:
                nat.half_open.remove(entry)
            else:
                nat.ending(entry, flags, kind == NOTE_APP, now)

    # --- packets in ---------------------------------------------------------------------------------

    def feed(self, packet: bytes, now: float) -> None:
        self._feed(packet, now, True)

    def feed_slow(self, packet: bytes, now: float) -> None:
        """:meth:`feed` for a packet :meth:`feed_into` has just declined: the fast path is not tried twice."""
        self._feed(packet, now, False)

    def _feed(self, packet: bytes, now: float, fast: bool) -> None:
        ip = 0
        partial = csum_ok = False
        if self._vnet:
            if len(packet) < VNET_LEN:
                self.count("vnet_truncated")
                return
            flags = packet[0]
            partial = bool(flags & VNET_F_NEEDS_CSUM)
            csum_ok = bool(flags & (VNET_F_NEEDS_CSUM | VNET_F_DATA_VALID))
            ip = VNET_LEN
        if fast:
            if len(packet) >= ip + 40 and packet[ip] == 0x45 and packet[ip + 9] == PROTO_TCP \
                    and self._fast4(packet, len(packet), ip, partial, csum_ok, now, False):
                return
            if len(packet) >= ip + 60 and packet[ip] >> 4 == 6 and packet[ip + 6] == PROTO_TCP \
                    and self._fast6(packet, len(packet), ip, partial, csum_ok, now, False):
                return
        parsed = parse_ip(packet, ip, self._vnet and packet[1] != 0)
        if isinstance(parsed, str):
            self.count(parsed)
            return
        version, src, dst, proto, l4, end = parsed
        if proto == PROTO_TCP:
            self._tcp(packet, ip, version, src, dst, l4, end, partial, csum_ok, now)
        elif self.inner is not None:
            self.inner.feed(packet, now)
        elif proto == PROTO_UDP:
            self.udp.input(version, src, dst, packet, l4, end, csum_ok, now)
        elif (proto == PROTO_ICMP and version == 4) or (proto == PROTO_ICMPV6 and version == 6):
            reply = echo_reply(version, src, dst, packet[l4:end], self._vnet)
            if isinstance(reply, str):
                self.count(reply)
            else:
                self.count("icmp_echo_replied")
                self.out.append(reply)
        else:
            self.count("ip_unknown_protocol")

    def feed_into(self, buf: bytearray, n: int, now: float) -> bool:
        """Rewrite the packet in ``buf[:n]`` in place if it takes the fast path; True if it did.

        For a driver that reads into one reused buffer: the caller writes ``buf[:n]`` back to
        the device when this returns True, and otherwise feeds a copy to :meth:`feed` (which
        handles, or drops and counts, everything else).  Nothing is changed or counted when
        this returns False.
        """
        ip = 0
        partial = csum_ok = False
        if self._vnet:
            if n < VNET_LEN:
                return False
            flags = buf[0]
            partial = bool(flags & VNET_F_NEEDS_CSUM)
            csum_ok = bool(flags & (VNET_F_NEEDS_CSUM | VNET_F_DATA_VALID))
            ip = VNET_LEN
        if n >= ip + 40 and buf[ip] == 0x45 and buf[ip + 9] == PROTO_TCP:
            return self._fast4(buf, n, ip, partial, csum_ok, now, True)
        return n >= ip + 60 and buf[ip] >> 4 == 6 and buf[ip + 6] == PROTO_TCP \
            and self._fast6(buf, n, ip, partial, csum_ok, now, True)

    def _fast4(self, p: bytes | bytearray, n: int, ip: int, partial: bool, csum_ok: bool, now: float,
               inplace: bool) -> bool:
        """IPv4 without options or fragments: :meth:`_fast_tcp` on the TCP segment."""
        total = (p[ip + 2] << 8) | p[ip + 3]
        if total < 40 or total > n - ip or p[ip + 6] & 0x3F or p[ip + 7] \
                or _FROM(p[ip:ip + 20], "big") % 0xFFFF:
            return False
        return self._fast_tcp(p, ip, ip + 12, ip + 20, ip + total, self._reply4, 0, partial, csum_ok, now, inplace)

    def _fast6(self, p: bytes | bytearray, n: int, ip: int, partial: bool, csum_ok: bool, now: float,
               inplace: bool) -> bool:
        """IPv6 whose next header is TCP (no extension headers): :meth:`_fast_tcp` on the segment."""
        total = 40 + ((p[ip + 4] << 8) | p[ip + 5])
        if total > n - ip:
            return False
        return self._fast_tcp(p, ip, ip + 8, ip + 40, ip + total, self._reply6, 65536, partial, csum_ok, now,
                              inplace)

    def _fast_tcp(self, p: bytes | bytearray, ip: int, addrs: int, l4: int, end: int, reply: bytes, port_base: int,
                  partial: bool, csum_ok: bool, now: float, inplace: bool) -> bool:
        """TCP to or from a known entry: the common case, inlined.

        The segment is ``p[l4:end]``; the source and destination addresses sit right before
        it at *addrs* (IPv4: the header checksum is patched too).  With *inplace* (a
        bytearray) the packet is rewritten where it is, else a rewritten copy goes to
        :attr:`out`.  Returns False, having changed nothing, for anything else (new
        connections, bad or unusual packets): :meth:`_tcp` then handles (and counts) it.
        Measured with ``plugins/stack_system/bench_nat.py``: a short connection's 9 packets
        99 -> 63 µs, a 64 KB segment 9.2 -> 5.2 µs.
        """
        flags = p[l4 + 13]
        hlen = (p[l4 + 12] >> 4) * 4
        if hlen < 20 or hlen > end - l4 or BAD_TCP_FLAGS[flags]:
            return False
        key = p[addrs:l4 + 4]  # src, dst, sport, dport: the table key
        if not isinstance(key, bytes):  # a slice of the reused read buffer: dict keys must be bytes
            key = bytes(key)
        if not csum_ok and (end - l4 <= VERIFY_MAX or flags & 7):
            seg = p[l4:end]
            value = _FROM(seg, "big")
            if len(seg) & 1:
                value <<= 8
            if (_FROM(key[:-4], "big") + PROTO_TCP + end - l4 + value) % 0xFFFF:
                return False
        nat = self.nat
        if key[:len(reply)] == reply:
            entry = nat.by_port.get(port_base + ((p[l4 + 2] << 8) | p[l4 + 3]))
            if entry is None:
                return False
            addr, ports, d_ip, d_l4 = entry.back_addr, entry.back_ports, entry.back_ip, entry.back_l4
            if flags & (FIN | RST):
                nat.ending(entry, flags, False, now)
        else:
            entry = nat.by_key.get(key)
            if entry is None or entry.pending or (entry.linger_until and flags & (SYN | ACK) == SYN) \
                    or entry in nat.half_open:
                return False
            addr, ports, d_ip, d_l4 = entry.fwd_addr, entry.fwd_ports, entry.fwd_ip, entry.fwd_l4
            if flags & (FIN | RST):
                nat.ending(entry, flags, True, now)
        entry.last = now
        c = (p[l4 + 16] << 8) | p[l4 + 17]  # read before *p* may be overwritten
        ip_sum = (p[ip + 10] << 8) | p[ip + 11]
        if inplace:
            buf = p
        else:
            buf = bytearray(p)
            self.out.append(buf)  # type: ignore[arg-type]
        assert isinstance(buf, bytearray)
        buf[addrs:l4] = addr
        if l4 - addrs == 8:  # IPv4: its header checksum covers the addresses
            ip_sum = 0xFFFF - ((0xFFFF - ip_sum) + d_ip) % 0xFFFF
            buf[ip + 10] = ip_sum >> 8
            buf[ip + 11] = ip_sum & 0xFF
        buf[l4:l4 + 4] = ports
        c = ((c + d_ip) % 0xFFFF or 0xFFFF) if partial else 0xFFFF - ((0xFFFF - c) + d_l4) % 0xFFFF
        buf[l4 + 16] = c >> 8
        buf[l4 + 17] = c & 0xFF
        return True

    def _tcp(self, packet: bytes, ip: int, version: int, src: bytes, dst: bytes, l4: int, end: int,
             partial: bool, csum_ok: bool, now: float) -> None:
        if end - l4 < 20:
            self.count("tcp_truncated")
            return
        hlen = (packet[l4 + 12] >> 4) * 4
        if hlen < 20 or l4 + hlen > end:
            self.count("tcp_bad_offset")
            return
        flags = packet[l4 + 13]
        if not csum_ok and (end - l4 <= VERIFY_MAX or flags & (SYN | FIN | RST)) and not valid(
                pseudo_sum(src, dst, PROTO_TCP, end - l4) + sum_of(memoryview(packet)[l4:end])):
            self.count("tcp_bad_checksum")
            return
        nat = self.nat
        side = nat.sides.get(version)
        if BAD_TCP_FLAGS[flags] and not (side is not None and src == side.local and dst == side.peer):
            # from the app: SYN+FIN, no ACK, ... would open a NAT entry (and a dial) or reach the kernel
            self.count("tcp_bad_flags")
            return
        if side is not None and dst == side.peer and src == side.local \
                and ((packet[l4] << 8) | packet[l4 + 1]) == side.port:
            # the kernel's listener answering: back to the app
            entry = nat.lookup_port(version, (packet[l4 + 2] << 8) | packet[l4 + 3])
            if entry is None:
                self.count("tcp_nat_unknown_port")
                return
            entry.last = now
            if flags & (FIN | RST):
                nat.ending(entry, flags, False, now)
            self.out.append(rewrite(packet, ip, l4, version, entry.back_addr, entry.back_ports, entry.back_ip,
                                    entry.back_l4, partial))  # type: ignore[arg-type]
            return
        key = nat_key(src, dst, packet[l4:l4 + 4])
        entry = nat.by_key.get(key)
        if entry is not None and entry.linger_until and flags & (SYN | ACK) == SYN:
            nat.free(entry)  # the app reuses the 4-tuple for a new connection
            entry = None
        if entry is None:
            if flags & (SYN | ACK | RST) != SYN:
                self.count("tcp_no_connection")
                self._answer_rst(packet, ip, l4, end, version, src, dst)
                return
            self._open(packet, version, key, now)
            return
        entry.last = now
        if entry.pending:
            if flags & RST:
                self.count("tcp_reset_while_pending")
                self._end(entry)
            elif flags & SYN:
                entry.syn = packet  # a retransmitted SYN replaces the held one
            return
        if flags & ACK and not flags & SYN:
            nat.half_open.remove(entry)  # the app completed its handshake with the kernel
            if entry.cref is not None and self.fast is not None:
                self.fast.established(entry)
        if flags & (FIN | RST):
            nat.ending(entry, flags, True, now)
        self.out.append(rewrite(packet, ip, l4, version, entry.fwd_addr, entry.fwd_ports, entry.fwd_ip,
                                entry.fwd_l4, partial))  # type: ignore[arg-type]

    def _open(self, packet: bytes, version: int, key: bytes, now: float) -> None:
        alen = 4 if version == 4 else 16
        dst = key[alen:2 * alen]
        if version == 4 and (dst[:1] in _DROP_DST_V4 or dst[0] >= 224):
            self.count("tcp_bad_destination")
            return
        if version == 6 and (dst[0] == 0xFF or dst == bytes(15) + b"\x01" or dst == bytes(16)):
            self.count("tcp_bad_destination")
            return
        victims = self.nat.half_open.admit(key[:alen], now)  # no SYN cookies here (see tunray.halfopen)
        if victims is None:
            self.count(DROPPED)  # its source's share is full: no state, no answer (it retransmits)
            return
        for victim in victims:
            assert isinstance(victim, NatEntry)
            self.count(EVICTED)
            self.nat.free(victim)  # quietly: a held SYN is forgotten; a late ACK meets no entry (RST)
            self.events.append(TcpReset(victim.handle))
        if len(self.nat) >= self.nat.max_entries and self.nat.evict_lingering():
            self.count("tcp_linger_evicted")  # a connection that has ended gives its slot to a new one
        entry = self.nat.open(version, key, now)
        if entry is None:
            self.count("tcp_max_flows" if version in self.nat.sides else "tcp_no_nat_address")
            parsed = parse_ip(packet, VNET_LEN if self.config.vnet_hdr else 0, True)
            if not isinstance(parsed, str):
                _v, src, d, _p, l4, end = parsed
                self._answer_rst(packet, VNET_LEN if self.config.vnet_hdr else 0, l4, end, version, src, d)
            return
        self.count("tcp_connections")
        self.nat.half_open.add(entry, key[:alen], now)
        sport, dport = (key[2 * alen] << 8) | key[2 * alen + 1], (key[2 * alen + 2] << 8) | key[2 * alen + 3]
        self.events.append(TcpOpened(entry.handle, key[:alen], sport, dst, dport, not self.config.eager))
        if self.config.eager:
            syn = self._pass_syn(entry, packet)
            if syn is not None:
                self.out.append(syn)  # type: ignore[arg-type]
            self._usable(entry)
        else:
            entry.pending = True
            entry.syn = packet

    def _pass_syn(self, entry: NatEntry, packet: bytes) -> bytearray | None:
        """The SYN rewritten for the kernel (None: an IPv6 header that no longer parses)."""
        partial = False
        ip = 0
        if self.config.vnet_hdr:
            partial = bool(packet[0] & VNET_F_NEEDS_CSUM)
            ip = VNET_LEN
        l4 = ip + ((packet[ip] & 15) * 4 if entry.version == 4 else 40)
        if entry.version == 6:
            parsed = parse_ip(packet, ip, False)
            if isinstance(parsed, str):
                return None
            l4 = parsed[4]
        return rewrite(packet, ip, l4, entry.version, entry.fwd_addr, entry.fwd_ports, entry.fwd_ip, entry.fwd_l4,
                       partial)

    def _answer_rst(self, packet: bytes, ip: int, l4: int, end: int, version: int, src: bytes, dst: bytes) -> None:
        rst = rst_for(packet, ip, l4, end, version, src, dst, self._prefix)
        if rst is not None:
            self.count("tcp_rst_sent")
            self.out.append(rst)

    def _end(self, entry: NatEntry) -> None:
        """Free *entry* and tell the driver its handle ended (before the kernel socket came)."""
        self.nat.free(entry)
        self.events.append(TcpReset(entry.handle))

    # --- packets out, time, events ------------------------------------------------------------------

    def drain(self, now: float) -> list[bytes]:
        out = self.out
        if self.inner is not None:
            out.extend(self.inner.drain(now))
        if not out:
            return out
        self.out = []
        return out

    def take_events(self) -> Sequence[CoreEvent]:
        evs = self.events
        if self.inner is not None:
            more = self.inner.take_events()
            if more:
                evs.extend(more)
        if not evs:
            return ()
        self.events = []
        return evs

    def next_timer(self) -> float | None:
        t = self.nat.next_timer()  # asked after every batch of packets: no list per call
        u = self.udp.next_timer()
        if u is not None and (t is None or u < t):
            t = u
        if self.inner is not None:
            u = self.inner.next_timer()
            if u is not None and (t is None or u < t):
                t = u
        return t

    def handle_timer(self, now: float) -> None:
        for entry in self.nat.expire(now):
            if entry.pending:
                self.count("tcp_pending_expired")
                self.events.append(TcpReset(entry.handle))
        self.udp.handle_timer(now)
        if self.inner is not None:
            self.inner.handle_timer(now)

    def reset_all(self, now: float) -> None:
        for entry in list(self.nat.by_key.values()):
            if entry.pending:
                self._refuse(entry)
                self.events.append(TcpReset(entry.handle))
        self.udp.reset_all()
        if self.inner is not None:
            self.inner.reset_all(now)

    def stats(self) -> dict[str, int]:
        out = {"tcp_open": len(self.nat), "tcp_half_open": len(self.nat.half_open), "udp_open": len(self.udp)}
        if self.inner is not None:
            out["udp_open"] = self.inner.stats().get("udp_open", 0)
        return out

    # --- TCP by handle (NAT entries) ----------------------------------------------------------------

    def tcp_accept(self, handle: int, now: float) -> None:
        syn = self.release_syn(handle)
        if syn is not None:
            self.out.append(syn)  # type: ignore[arg-type]

    def release_syn(self, handle: int) -> bytearray | None:
        """:meth:`tcp_accept` for a driver that writes the SYN itself: the held SYN, rewritten for the kernel."""
        entry = self.nat.by_handle.get(handle)
        if entry is None or not entry.pending or entry.syn is None:
            return None
        entry.pending = False
        syn, entry.syn = entry.syn, None
        self._usable(entry)
        return self._pass_syn(entry, syn)

    def tcp_abort(self, handle: int, now: float) -> None:
        """Refuse a held SYN (RST) and free the entry; an entry past its SYN ends with the kernel socket."""
        entry = self.nat.by_handle.get(handle)
        if entry is not None and entry.pending:
            self._refuse(entry)

    def _refuse(self, entry: NatEntry) -> None:
        syn = entry.syn
        self.nat.free(entry)
        if syn is None:
            return
        ip = VNET_LEN if self.config.vnet_hdr else 0
        parsed = parse_ip(syn, ip, True)
        if not isinstance(parsed, str):
            _v, src, dst, _p, l4, end = parsed
            self._answer_rst(syn, ip, l4, end, entry.version, src, dst)

    def tcp_close(self, handle: int, now: float) -> None:
        self.tcp_abort(handle, now)

    def tcp_read(self, handle: int, max_bytes: int, now: float) -> bytes | None:
        raise KeyError(handle)  # NAT flows are read from their kernel socket

    def tcp_write(self, handle: int, data: bytes | bytearray | memoryview, now: float) -> bool:
        raise KeyError(handle)

    def tcp_writable(self, handle: int) -> bool:
        raise KeyError(handle)

    def tcp_shutdown(self, handle: int, now: float) -> None:
        raise KeyError(handle)

    # --- UDP by handle ------------------------------------------------------------------------------

    def udp_recv(self, handle: int) -> tuple[bytes, bytes, int] | None:
        if self.inner is not None:
            return self.inner.udp_recv(handle)
        return self.udp.recv(handle)

    def udp_send(self, handle: int, data: bytes, src_ip: bytes, src_port: int, now: float) -> bool:
        if self.inner is not None:
            return self.inner.udp_send(handle, data, src_ip, src_port, now)
        return self.udp.send(handle, data, src_ip, src_port, now)

    def udp_close(self, handle: int, now: float) -> None:
        if self.inner is not None:
            self.inner.udp_close(handle, now)
        else:
            self.udp.close(handle)
