"""TCP by kernel NAT: the table and the header rewrite (sans-IO, no sockets, no clock).

Theory of operation (the design of sing-tun's ``system`` stack; the code is tunray's).
The TUN holds an address ``local`` (the listener's) and the prefix holds a second one,
``peer``, that nobody uses.  A TCP packet from the app ``C:cp -> D:dp`` is rewritten to
``peer:np -> local:lp`` and written back into the TUN, so the kernel's own TCP receives it
"from the network" and completes the connection on an ordinary listener bound to
``local:lp``.  The kernel's replies ``local:lp -> peer:np`` leave through the TUN (``peer``
is on-link there) and are rewritten back to ``D:dp -> C:cp``.  ``np`` (the NAT port) names
the entry: the listener learns the original destination by looking up its peer's port.

Invariants.

* An entry is keyed both ways: ``(C, cp, D, dp)`` and ``(family, np)``.  NAT ports are
  handed out sequentially from :data:`PORT_FIRST`, skipping live ones (a collision
  check), so a port is reused as late as possible (the kernel may still hold it in
  TIME_WAIT).
* Python touches headers only.  Addresses and ports change, so the checksums are patched
  with RFC 1624 (:func:`tunray.net.packet.update`'s formula, with the per-entry deltas
  precomputed once): IPv4's header checksum by the address delta, TCP's by the address
  and port delta.  A TCP checksum the kernel left partial (virtio ``NEEDS_CSUM``: it holds
  the pseudo-header sum, the kernel sums from ``csum_start`` on) gets only the address
  delta, uncomplemented.  A GSO super-packet is one packet here: its virtio header
  (lengths, offsets, segment size) stays valid because no header changes length.
* Payloads are never summed.  A segment's checksum is verified only when it is small
  (at most :data:`VERIFY_MAX` bytes of TCP) or changes state (SYN, FIN, RST); a bad
  checksum on a bigger data segment survives the incremental update unchanged (RFC 1624
  is linear) and the kernel's TCP drops the segment.
* Entries end by FIN/RST tracking and idle time: a RST either way, or FINs both ways,
  leave the entry :data:`LINGER` seconds for retransmissions, then it is freed; an entry
  with no packet for ``idle`` seconds is freed.  A lingering entry is no flow: when the
  table is full, a new connection takes the slot of the oldest lingering one
  (:meth:`TcpNat.evict_lingering`) and is refused only when none lingers (else a steady
  rate above ``max_entries / LINGER`` connections a second would be refused).  A non-SYN segment from the app with no
  entry is answered with RST, as a closed port would be.
* Lazy handshake: a new SYN is held (``pending``) until :meth:`TcpNat.accept` lets it
  through; :meth:`TcpNat.refuse` answers it with RST instead.
* This table is the owner of every entry.  A :class:`Mirror` (the C fast path,
  :mod:`tunray_stack_system.fastpath`) may hold copies of the entries whose SYN has
  passed: :meth:`TcpNat.free` takes an entry out of it, and :meth:`TcpNat.expire` asks it
  for the entries' last-packet times (it keeps them) before an idle sweep.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from tunray.halfopen import HalfOpenTable
from tunray.net.packet import PROTO_TCP, ip_header, pseudo_sum, sum_of

SYN, FIN, RST, ACK = 0x02, 0x01, 0x04, 0x10
PORT_FIRST = 10000
VERIFY_MAX = 512  # TCP bytes (header + payload) up to which a segment's checksum is checked here
LINGER = 3.0  # seconds an entry outlives a RST or the second FIN (retransmissions, the last ACK)
LINGER_BATCH = 0.5  # the timer frees lingering entries at most this late, so one wake-up frees many
_TCP = struct.Struct("!HHIIBBHHH")
_PORTS = struct.Struct("!HH")


@dataclass(frozen=True, slots=True)
class Side:
    """One family's NAT addresses: the TUN's own (listener) address, the fake client, the listen port."""

    local: bytes
    peer: bytes
    port: int


def nat_key(src: bytes, dst: bytes, ports: bytes) -> bytes:
    """The table key of a connection: source and destination address, then both ports, as on the wire."""
    return src + dst + ports


class NatEntry:
    """One NATed connection.  ``fwd_*``: what app -> kernel packets become; ``back_*`` the reverse.

    ``key`` is :func:`nat_key` of the app's packets (an IPv4 header's bytes 12..20 plus the
    TCP ports, so the fast path slices it in one go).
    """

    __slots__ = ("back_addr", "back_ip", "back_l4", "back_ports", "cref", "fin_app", "fin_kernel", "fwd_addr", "fwd_ip",
                 "fwd_l4", "fwd_ports", "handle", "key", "last", "linger_until", "pending", "port", "syn",
                 "version")

    def __init__(self, handle: int, version: int, key: bytes, port: int, side: Side, now: float) -> None:
        alen = 4 if version == 4 else 16
        src, dst = key[:alen], key[alen:2 * alen]
        sport, dport = _PORTS.unpack_from(key, 2 * alen)
        self.handle = handle
        self.version = version
        self.key = key
        self.port = port
        self.fwd_addr = side.peer + side.local
        self.fwd_ports = _PORTS.pack(port, side.port)
        self.back_addr = dst + src
        self.back_ports = _PORTS.pack(dport, sport)
        # RFC 1624 deltas, from two sums: a port's word sums to itself, and the ports follow the
        # (even-length) addresses, so the sums add up (``sum(new) - sum(old)`` of the whole, mod 0xFFFF)
        old_ip, new_ip = sum_of(key[:2 * alen]), sum_of(self.fwd_addr)
        self.fwd_ip = (new_ip + 0xFFFF - old_ip) % 0xFFFF
        self.fwd_l4 = (new_ip + port + side.port + 0xFFFF - (old_ip + sport + dport) % 0xFFFF) % 0xFFFF
        self.back_ip = (0xFFFF - self.fwd_ip) % 0xFFFF
        self.back_l4 = (0xFFFF - self.fwd_l4) % 0xFFFF
        self.pending = False
        self.syn: bytes | None = None  # the held SYN (lazy), as read from the device
        self.fin_app = False
        self.fin_kernel = False
        self.last = now
        self.linger_until = 0.0  # 0: not lingering
        self.cref: Any = None  # the entry's copy in a :class:`Mirror` (its C struct), if any


def rewrite(packet: bytes, ip: int, l4: int, version: int, addr: bytes, ports: bytes, d_ip: int, d_l4: int,
            partial_csum: bool) -> bytearray:
    """A copy of *packet* with new addresses (src+dst) and ports, checksums patched (RFC 1624)."""
    buf = bytearray(packet)
    if version == 4:
        buf[ip + 12:ip + 20] = addr
        c = (buf[ip + 10] << 8) | buf[ip + 11]
        c = 0xFFFF - ((0xFFFF - c) + d_ip) % 0xFFFF
        buf[ip + 10] = c >> 8
        buf[ip + 11] = c & 0xFF
    else:
        buf[ip + 8:ip + 40] = addr
    buf[l4:l4 + 4] = ports
    c = (buf[l4 + 16] << 8) | buf[l4 + 17]
    if partial_csum:
        c = (c + d_ip) % 0xFFFF or 0xFFFF
    else:
        c = 0xFFFF - ((0xFFFF - c) + d_l4) % 0xFFFF
    buf[l4 + 16] = c >> 8
    buf[l4 + 17] = c & 0xFF
    return buf


def tcp_rst(version: int, src: bytes, sport: int, dst: bytes, dport: int, seq: int, ack: int | None,
            prefix: bytes) -> bytes:
    """A RST from ``src:sport`` to ``dst:dport`` (RST|ACK when *ack* is given)."""
    flags = RST | (ACK if ack is not None else 0)
    head = _TCP.pack(sport, dport, seq & 0xFFFFFFFF, (ack or 0) & 0xFFFFFFFF, 5 << 4, flags, 0, 0, 0)
    csum = 0xFFFF - (pseudo_sum(src, dst, PROTO_TCP, 20) + sum_of(head)) % 0xFFFF
    head = head[:16] + csum.to_bytes(2, "big") + head[18:]
    return prefix + ip_header(version, src, dst, PROTO_TCP, 20) + head


def rst_for(packet: bytes, ip: int, l4: int, end: int, version: int, src: bytes, dst: bytes,
            prefix: bytes) -> bytes | None:
    """The RST answering the segment at *l4* (RFC 793 "reset generation"), or None for a RST."""
    sport, dport, seq, ack, _off, flags, _w, _c, _u = _TCP.unpack_from(packet, l4)
    if flags & RST:
        return None
    if flags & ACK:
        return tcp_rst(version, dst, dport, src, sport, ack, None, prefix)
    hlen = (packet[l4 + 12] >> 4) * 4
    length = end - l4 - hlen + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
    return tcp_rst(version, dst, dport, src, sport, 0, seq + length, prefix)


class Mirror(Protocol):
    """A copy of some entries that keeps their last-packet time (the C fast path)."""

    def remove(self, entry: NatEntry) -> None: ...

    def refresh(self, entries: Iterable[NatEntry]) -> None: ...


class TcpNat:
    """The NAT table.  ``sides[4]`` / ``sides[6]``: the family's addressing, or absent (no TCP there)."""

    def __init__(self, sides: dict[int, Side], *, max_entries: int, idle: float,
                 half_open: HalfOpenTable | None = None) -> None:
        self.sides = sides
        #: entries whose handshake the app has not completed (SYN held, or passed and not ACKed yet)
        self.half_open = half_open if half_open is not None else HalfOpenTable(max_entries, max_entries, idle)
        self.max_entries = max_entries
        self.idle = idle
        self.by_key: dict[bytes, NatEntry] = {}
        self.by_port: dict[int, NatEntry] = {}  # port, +65536 for IPv6
        self.by_handle: dict[int, NatEntry] = {}
        self.lingering: dict[NatEntry, None] = {}
        self._next = {4: PORT_FIRST, 6: PORT_FIRST}
        self._last_handle = 0
        self._idle_check = 0.0  # when the next idle sweep is due
        self.mirror: Mirror | None = None

    def __len__(self) -> int:
        return len(self.by_key)

    def allocate(self, version: int) -> int | None:
        """The next free NAT port of the family (sequential, skipping live entries), or None."""
        base = 0 if version == 4 else 65536
        port = self._next[version]
        for _ in range(65536 - PORT_FIRST):
            if port > 65535:
                port = PORT_FIRST
            if base + port not in self.by_port:
                self._next[version] = port + 1
                return port
            port += 1
        return None

    def open(self, version: int, key: bytes, now: float) -> NatEntry | None:
        """A new entry for *key*, or None when the table is full or the family has no addressing."""
        side = self.sides.get(version)
        if side is None or len(self.by_key) >= self.max_entries:
            return None
        port = self.allocate(version)
        if port is None:
            return None
        self._last_handle -= 1  # negative: never collides with the handles of a UDP core beside this one
        entry = NatEntry(self._last_handle, version, key, port, side, now)
        self.by_key[key] = entry
        self.by_port[port if version == 4 else port + 65536] = entry
        self.by_handle[entry.handle] = entry
        return entry

    def free(self, entry: NatEntry) -> None:
        self.half_open.remove(entry)
        if entry.cref is not None and self.mirror is not None:
            self.mirror.remove(entry)
        if self.by_key.get(entry.key) is entry:
            del self.by_key[entry.key]
            del self.by_port[entry.port if entry.version == 4 else entry.port + 65536]
            del self.by_handle[entry.handle]
        self.lingering.pop(entry, None)

    def evict_lingering(self) -> bool:
        """Free the oldest lingering entry (the table is full, a new connection needs room); False if none lingers."""
        oldest = next(iter(self.lingering), None)
        if oldest is None:
            return False
        self.free(oldest)
        return True

    def linger(self, entry: NatEntry, now: float) -> None:
        if not entry.linger_until:
            entry.linger_until = now + LINGER
            self.lingering[entry] = None

    def ending(self, entry: NatEntry, flags: int, from_app: bool, now: float) -> None:
        """A FIN or RST passed: a RST, or the second direction's FIN, starts the linger."""
        if flags & RST:
            self.linger(entry, now)
            return
        if from_app:
            entry.fin_app = True
        else:
            entry.fin_kernel = True
        if entry.fin_app and entry.fin_kernel:
            self.linger(entry, now)

    def lookup_port(self, version: int, port: int) -> NatEntry | None:
        return self.by_port.get(port if version == 4 else port + 65536)

    def expire(self, now: float) -> list[NatEntry]:
        """Free what lingered long enough or sat idle; return the freed entries.

        ``lingering`` is in insertion order and every entry lingers :data:`LINGER` seconds,
        so the due ones are a prefix of it.
        """
        gone: list[NatEntry] = []
        for e in self.lingering:
            if e.linger_until > now:
                break
            gone.append(e)
        if now >= self._idle_check:
            self._idle_check = now + max(1.0, self.idle / 8)
            cutoff = now - self.idle
            if self.mirror is not None:
                self.mirror.refresh(self.by_key.values())
            gone.extend(e for e in self.by_key.values() if e.last < cutoff and not e.linger_until)
        for e in gone:
            self.free(e)
        return gone

    def next_timer(self) -> float | None:
        """When :meth:`expire` has work: the idle sweep, or :data:`LINGER_BATCH` after the first linger ends.

        At a thousand connections a second, a timer per ended entry would be a wake-up per
        connection; with the slack one wake-up frees every entry due by then.
        """
        if not self.by_key:
            return None
        t = self._idle_check
        if self.lingering:
            first = next(iter(self.lingering)).linger_until + LINGER_BATCH
            if first < t:
                return first
        return t
