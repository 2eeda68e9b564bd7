"""The C fast path (``fastpath.c``, built by cffi at install): a mirror of the usable NAT entries and the TUN loop.

:class:`~tunray_stack_system.nat.TcpNat` stays the owner of every entry.  It hands an
entry to the mirror (:meth:`FastTable.add`) once the entry's SYN has passed, and takes it
back when it frees it; :meth:`FastTable.pump` then reads packets from the TUN, rewrites
those of mirrored entries in place exactly as ``SystemCore._fast_tcp`` would, writes
them back, and stops at the first packet it declines (left in the buffer for
``SystemCore.feed_slow``).  What the Python table must learn comes back as notes
(:meth:`FastTable.notes`): a handshake ACK (out of the half-open budget), a FIN or RST
either way (``TcpNat.ending``).  Each entry's last-packet time lives in C;
:meth:`FastTable.refresh` copies it into the Python entries before the idle sweep.

Measured with ``plugins/stack_system/bench_nat.py`` (the stack's read loop over a
descriptor pair, the 10 packets of a short connection, syscalls included): 51 µs of CPU
per connection in Python, 27 in C, of which ~22 are the read and write syscalls.  Through
a real TUN (``bench/bench_cps.py --proxy tunray-system --mtu 65535``, one worker) the
proxy's user CPU per connection went from ~90 to ~68 µs.

Without the extension (no compiler at install) or with ``TUNRAY_STACK_SYSTEM_NO_C=1``,
:func:`load` returns None and the stack runs the pure-Python path.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from tunray.net.packet import BAD_TCP_FLAGS

from tunray_stack_system.nat import VERIFY_MAX, NatEntry, Side

AGAIN, BATCH, SLOW, WRITE, EOF, ERROR = range(6)
NOTE_ESTABLISHED, NOTE_APP, NOTE_KERNEL = 1, 2, 3

_lib: Any = None
_ffi: Any = None


def load() -> tuple[Any, Any] | None:
    """``(ffi, lib)`` of the extension, or None (not built, or disabled by ``TUNRAY_STACK_SYSTEM_NO_C``)."""
    global _ffi, _lib
    if os.environ.get("TUNRAY_STACK_SYSTEM_NO_C"):
        return None
    if _lib is None:
        try:
            from tunray_stack_system._fastpath import ffi, lib  # type: ignore[import-not-found]
        except ImportError:
            return None
        _ffi, _lib = ffi, lib
    return _ffi, _lib


class FastTable:
    """The C table of one :class:`~tunray_stack_system.core.SystemCore` (see the module docstring)."""

    __slots__ = ("_buf", "_buf_len", "_done", "_err", "_ffi", "_len", "_lib", "_nnotes", "_table", "count")

    def __init__(self, sides: dict[int, Side], *, max_entries: int, vnet: bool, buf: bytearray) -> None:
        loaded = load()
        if loaded is None:
            raise RuntimeError("the system stack's C fast path is not built")
        ffi, lib = loaded
        self._ffi, self._lib = ffi, lib
        table = lib.sf_new(max_entries, BAD_TCP_FLAGS, int(vnet), VERIFY_MAX, int.from_bytes(os.urandom(4), "big"))
        if table == ffi.NULL:
            raise MemoryError("the system stack's C NAT table")
        self._table = ffi.gc(table, lib.sf_destroy)
        for version, side in sides.items():
            reply = side.local + side.peer + side.port.to_bytes(2, "big")
            lib.sf_side(table, version, reply, len(reply))
        self._buf = ffi.from_buffer(buf)  # the stack's reused read buffer (never resized)
        self._buf_len = len(buf)
        self._len = ffi.new("size_t *")
        self._err = ffi.new("int *")
        self._done = ffi.new("int *")
        self._nnotes = ffi.new("size_t *")
        self.count = 0  # packets handled (read) by :meth:`pump`, declined ones included

    def __len__(self) -> int:
        return int(self._lib.sf_count(self._table))

    def add(self, entry: NatEntry, half_open: bool) -> None:
        """Mirror *entry* (its SYN has passed); *half_open*: the app has not ACKed the handshake yet."""
        if entry.cref is not None:
            return
        cref = self._lib.sf_add(self._table, entry.handle, entry.version, entry.key, entry.port, entry.fwd_addr,
                                entry.fwd_ports, entry.fwd_ip, entry.fwd_l4, entry.back_addr, entry.back_ports,
                                entry.back_ip, entry.back_l4, int(half_open), entry.last)
        if cref != self._ffi.NULL:  # else out of memory: the entry just stays on the Python path
            entry.cref = cref

    def remove(self, entry: NatEntry) -> None:
        cref, entry.cref = entry.cref, None
        if cref is not None:
            if cref.last > entry.last:
                entry.last = cref.last
            self._lib.sf_remove(self._table, cref)

    def established(self, entry: NatEntry) -> None:
        """Python's slow path took *entry* out of the half-open budget."""
        if entry.cref is not None:
            self._lib.sf_established(entry.cref)

    def refresh(self, entries: Iterable[NatEntry]) -> None:
        """Copy each mirrored entry's last-packet time from C (before an idle sweep)."""
        for e in entries:
            cref = e.cref
            if cref is not None and cref.last > e.last:
                e.last = cref.last

    def notes(self) -> list[tuple[int, int, int]]:
        """``(handle, kind, tcp flags)`` of what C passed since the last call, in order."""
        notes = self._lib.sf_notes(self._table, self._nnotes)
        return [(notes[i].handle, notes[i].kind, notes[i].flags) for i in range(self._nnotes[0])]

    def packet(self, buf: bytearray, n: int, now: float) -> bool:
        """Rewrite ``buf[:n]`` in place if C takes it (``SystemCore.feed_into``'s contract)."""
        return bool(self._lib.sf_packet(self._table, self._ffi.from_buffer(buf), n, now))

    def pump(self, fd: int, batch: int, now: float) -> tuple[int, int, int, int]:
        """Up to *batch* packets from *fd* through C into the stack's buffer: ``(code, read, length, notes)``.

        *code*: :data:`AGAIN` (nothing left), :data:`BATCH` (the batch is done), :data:`SLOW`
        (the buffer holds a declined packet of *length*), :data:`WRITE` (it holds a rewritten
        packet the device did not take), :data:`EOF`, :data:`ERROR` (:attr:`errno` says why).
        *read* counts the packets read (a declined one included); *notes*: :meth:`notes` has some.
        """
        code = self._lib.sf_pump(self._table, fd, self._buf, self._buf_len, batch, now, self._len, self._err,
                                 self._done, self._nnotes)
        done = self._done[0]
        self.count += done
        return code, done, self._len[0], self._nnotes[0]

    @property
    def errno(self) -> int:
        return int(self._err[0])
