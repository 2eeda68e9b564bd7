"""Loading the compiled glue, and the start-up self-test of lwIP's direct input path.

The extension ``tunray_stack_lwip._lwip`` is built by cffi when the plugin is installed
(``setup.py``), against Debian's ``liblwip-dev`` headers, and links ``liblwip.so.0``
(``liblwip0``).  Without either, :func:`load` raises :class:`LwipUnavailable` with one
line naming the package; ``tunray run -test`` reports it through the stack's settings
check.

:func:`self_test` runs before a core is used: a SYN to a foreign IPv4 and IPv6 address
must come back as a SYN-ACK *from* that address (the ``ip_data``/``tcp_input`` path and
the netif output), and lwIP's clock must be ours.  If the installed library does not
behave as the headers the glue was compiled against say, the stack refuses to start.
"""

from __future__ import annotations

import struct
from typing import Any

from tunray.net.packet import PROTO_TCP, finish, ip_header, parse_ip, pseudo_sum, sum_of

PACKAGES = "Debian packages liblwip0 and liblwip-dev (apt-get install liblwip-dev, then ./scripts/install)"


class LwipUnavailable(RuntimeError):
    """The lwIP extension or library is missing or does not behave as expected."""


_loaded: tuple[Any, Any] | None = None


def load() -> tuple[Any, Any]:
    """``(ffi, lib)`` of the glue, or :class:`LwipUnavailable` naming what to install."""
    global _loaded
    if _loaded is None:
        try:
            from tunray_stack_lwip._lwip import ffi, lib  # type: ignore[import-not-found]
        except ImportError as exc:
            raise LwipUnavailable(f"the lwip stack needs the {PACKAGES}: {exc}") from None
        _loaded = (ffi, lib)
    return _loaded


def unavailable_reason() -> str | None:
    try:
        load()
    except LwipUnavailable as exc:
        return str(exc)
    return None


def tcp_segment(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int,
                payload: bytes = b"", options: bytes = b"", window: int = 65535) -> bytes:
    """An IP packet carrying one TCP segment with a valid checksum (tests and the self-test)."""
    hlen = 20 + len(options)
    head = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, (hlen // 4) << 4, flags, window, 0, 0)
    seg = head + options + payload
    csum = finish(pseudo_sum(src, dst, PROTO_TCP, len(seg)) + sum_of(seg))
    seg = seg[:16] + csum.to_bytes(2, "big") + seg[18:]
    return ip_header(4 if len(src) == 4 else 6, src, dst, PROTO_TCP, len(seg)) + seg


_PROBES = (
    (bytes((192, 0, 2, 2)), bytes((198, 51, 100, 9))),
    (bytes.fromhex("20010db8000000000000000000000002"), bytes.fromhex("20010db8ffff00000000000000000009")),
)


def self_test(ffi: Any, lib: Any, now: float) -> None:
    """Check the direct input path on the loaded library; raises :class:`LwipUnavailable`."""
    key = ffi.new("uint8_t[40]")
    keylen = ffi.new("size_t *")
    recs = ffi.new("uint32_t **")
    n = ffi.new("size_t *")
    lib.tr_setup(now, 1500, 0, 0, 0, 0, 1 << 16, 600, 0)
    if not lib.tr_clock_hooked():
        raise LwipUnavailable("lwIP does not use the glue's clock (sys_now interposition failed)")
    try:
        for src, dst in _PROBES:
            syn = tcp_segment(src, dst, 40001, 9, 1000, 0, 0x02, options=b"\x02\x04\x05\xb4")
            l4 = 20 if len(src) == 4 else 40
            if lib.tr_input(syn, 0, l4, len(syn), 0, now, key, keylen) != lib.TR_NEW_SYN:
                raise LwipUnavailable("lwIP self-test: a new SYN was not recognised")
            if lib.tr_listen(9) != 0 or lib.tr_input(syn, 0, l4, len(syn), lib.TR_IN_FORCE, now, key, keylen) < 0:
                raise LwipUnavailable("lwIP self-test: tcp_input refused the SYN")
            buf = lib.tr_output(recs, n)
            replies = [ffi.buffer(buf + recs[0][2 * i], recs[0][2 * i + 1])[:] for i in range(n[0])]
            if len(replies) != 1:
                raise LwipUnavailable(f"lwIP self-test: {len(replies)} packets answered a SYN, expected 1")
            parsed = parse_ip(replies[0], 0, False)
            if isinstance(parsed, str):
                raise LwipUnavailable(f"lwIP self-test: malformed SYN-ACK ({parsed})")
            _v, rsrc, rdst, proto, rl4, _end = parsed
            sport, dport, _seq, ack, _off, flags = struct.unpack_from("!HHIIBB", replies[0], rl4)
            if (rsrc, rdst, proto, sport, dport, ack, flags & 0x17) != (dst, src, PROTO_TCP, 9, 40001, 1001, 0x12):
                raise LwipUnavailable("lwIP self-test: the SYN-ACK does not come from the SYN's destination "
                                      "(ip_data layout or tcp_input behaviour differs from the headers)")
    finally:
        lib.tr_reset_all(now)
        lib.tr_output(recs, n)
        lib.tr_events(n)
