"""QUIC sniffer: the SNI of the ClientHello carried in a client's Initial packets.

Theory of operation.  A client's first flight is one or more UDP datagrams, each holding
coalesced long-header packets (RFC 9000 §12.2), possibly followed by zero padding.  For every
Initial packet of the connection's first Destination Connection ID we remove header protection,
decrypt with the public Initial keys (:mod:`tunray.sniff.quic_crypto`) and collect its CRYPTO
frames.  Chrome splits and shuffles the ClientHello across CRYPTO frames and packets, so the
stream is reassembled by offset; the ClientHello parser only ever sees the contiguous prefix
that starts at offset 0, and says :class:`NeedMoreData` while that prefix is too short.

:class:`QuicSniffer` is fed datagrams one at a time (what a UDP flow delivers).
:func:`sniff_quic` takes one buffer -- one datagram, or several datagrams concatenated, as
Xray's sniffer and its tests do -- and :func:`sniff_quic_packets` a list of datagrams.
Limits: 64 KiB of CRYPTO stream, 256 disjoint CRYPTO ranges; beyond them, :class:`NoClue`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tunray.sniff.quic_crypto import INITIAL_SALTS, client_initial_keys
from tunray.sniff.result import NeedMoreData, NoClue, SniffResult
from tunray.sniff.tls import MAX_CLIENT_HELLO, server_name_from_client_hello

PROTOCOL = "quic"

MAX_CRYPTO_STREAM = MAX_CLIENT_HELLO
MAX_CRYPTO_RANGES = 256
MAX_CID_LEN = 20

PACKET_INITIAL = 0
PACKET_RETRY = 3

FRAME_PADDING = 0x00
FRAME_PING = 0x01
FRAME_ACK = 0x02
FRAME_ACK_ECN = 0x03
FRAME_CRYPTO = 0x06
FRAME_CONNECTION_CLOSE = 0x1C

_NON_ZERO = re.compile(b"[^\x00]")


class _Short(Exception):
    """Internal: a field runs past the end of its buffer."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode a variable-length integer (RFC 9000 §16); return (value, next position)."""
    if pos >= len(buf):
        raise _Short
    size = 1 << (buf[pos] >> 6)
    end = pos + size
    if end > len(buf):
        raise _Short
    return int.from_bytes(buf[pos:end], "big") & ((1 << (8 * size - 2)) - 1), end


def _skip_zeros(buf: bytes, pos: int) -> int:
    found = _NON_ZERO.search(buf, pos)
    return found.start() if found else len(buf)


def _crypto_frames(payload: bytes) -> list[tuple[int, bytes]]:
    """Walk the frames of a decrypted Initial payload; return its CRYPTO (offset, data) pairs.

    Only PADDING, PING, ACK, CRYPTO and CONNECTION_CLOSE may appear (RFC 9000 §17.2.2).
    """
    chunks: list[tuple[int, bytes]] = []
    pos = 0
    try:
        while pos < len(payload):
            frame_type = payload[pos]
            pos += 1
            if frame_type == FRAME_PADDING:
                pos = _skip_zeros(payload, pos)
            elif frame_type == FRAME_PING:
                pass
            elif frame_type in (FRAME_ACK, FRAME_ACK_ECN):
                # ACK { Largest Acknowledged, ACK Delay, ACK Range Count, First ACK Range,
                #       ACK Range { Gap, ACK Range Length } ..., [ECN Counts { ECT0, ECT1, ECN-CE }] }
                _, pos = _varint(payload, pos)
                _, pos = _varint(payload, pos)
                count, pos = _varint(payload, pos)
                _, pos = _varint(payload, pos)
                if count > len(payload):
                    raise _Short
                for _ in range(2 * count + (3 if frame_type == FRAME_ACK_ECN else 0)):
                    _, pos = _varint(payload, pos)
            elif frame_type == FRAME_CRYPTO:
                # CRYPTO { Type (i) = 0x06, Offset (i), Length (i), Crypto Data (..) }
                offset, pos = _varint(payload, pos)
                length, pos = _varint(payload, pos)
                if pos + length > len(payload):
                    raise _Short
                chunks.append((offset, payload[pos : pos + length]))
                pos += length
            elif frame_type == FRAME_CONNECTION_CLOSE:
                # CONNECTION_CLOSE { Error Code (i), Frame Type (i), Reason Phrase Length (i), Reason (..) }
                _, pos = _varint(payload, pos)
                _, pos = _varint(payload, pos)
                length, pos = _varint(payload, pos)
                if pos + length > len(payload):
                    raise _Short
                pos += length
            else:
                raise NoClue(f"frame type {frame_type:#x} not allowed in an Initial packet")
    except _Short:
        raise NoClue("truncated frame in Initial packet") from None
    return chunks


class QuicSniffer:
    """Sniff a QUIC client's first flight, one UDP datagram at a time.

    :meth:`feed` returns the :class:`SniffResult` once the SNI is known (and keeps returning
    it), raises :class:`NeedMoreData` while the ClientHello is incomplete, and raises
    :class:`NoClue` -- from then on, for every call -- once the flow is known not to be a
    sniffable QUIC client Initial.
    """

    __slots__ = ("_crypto", "_dcid", "_failure", "_ranges", "_result", "_version")

    def __init__(self) -> None:
        self._dcid: bytes | None = None
        self._version = 0
        self._crypto = bytearray()
        self._ranges: list[tuple[int, int]] = []  # sorted, disjoint, non-adjacent [start, end)
        self._result: SniffResult | None = None
        self._failure: NoClue | None = None

    def feed(self, datagram: bytes) -> SniffResult:
        if self._result is not None:
            return self._result
        if self._failure is not None:
            raise self._failure
        try:
            self._feed(datagram)
        except NoClue as exc:
            self._failure = exc
            raise
        if self._result is None:
            raise NeedMoreData("ClientHello incomplete")
        return self._result

    def _feed(self, d: bytes) -> None:
        if not d or d[0] & 0xC0 != 0xC0:
            raise NoClue("not a QUIC long-header packet")
        pos = 0
        while pos < len(d) and self._result is None:
            first = d[pos]
            if first & 0xC0 != 0xC0:
                break  # a short-header packet or garbage: the rest of the datagram is not ours
            pos = self._packet(d, pos)
            pos = _skip_zeros(d, pos)  # padding after a packet (Xray's zero_padded_datagrams)
        if self._dcid is None:
            raise NoClue("no QUIC Initial packet")

    def _packet(self, d: bytes, start: int) -> int:
        """Process the long-header packet at *start*; return where the next one begins."""
        # Long Header Packet { Header Form (1) = 1, Fixed Bit (1) = 1, Long Packet Type (2),
        #   Type-Specific Bits (4), Version (32), DCID Length (8), DCID (0..160),
        #   SCID Length (8), SCID (0..160), [Initial: Token Length (i), Token (..)],
        #   Length (i), Packet Number (8..32), Packet Payload (..) }       (RFC 9000 §17.2)
        first = d[start]
        packet_type = (first >> 4) & 0x3
        leading = start == 0 or self._dcid is None
        try:
            version = int.from_bytes(self._take(d, start + 1, 4), "big")
            if version not in INITIAL_SALTS or packet_type == PACKET_RETRY:
                if leading:
                    raise NoClue(f"unsupported QUIC version {version:#x} or packet type")
                return len(d)
            pos = start + 5
            dcid_len = self._take(d, pos, 1)[0]
            dcid = self._take(d, pos + 1, dcid_len)
            pos += 1 + dcid_len
            scid_len = self._take(d, pos, 1)[0]
            if dcid_len > MAX_CID_LEN or scid_len > MAX_CID_LEN:
                raise NoClue("connection ID longer than 20 bytes")
            pos += 1 + scid_len
            if packet_type == PACKET_INITIAL:
                token_len, pos = _varint(d, pos)
                pos += token_len
            length, pn_offset = _varint(d, pos)
        except _Short:
            raise NoClue("truncated QUIC long header") from None
        end = pn_offset + length
        if end > len(d):
            raise NoClue("QUIC packet longer than its datagram")
        if packet_type != PACKET_INITIAL:
            return end  # 0-RTT or Handshake: nothing to sniff, skip it
        if self._dcid is None:
            self._dcid, self._version = dcid, version
        elif dcid != self._dcid or version != self._version:
            return end  # another connection's packet (RFC 9000 §12.2): ignore
        self._initial(d, start, pn_offset, end)
        return end

    @staticmethod
    def _take(d: bytes, pos: int, n: int) -> bytes:
        if pos + n > len(d):
            raise _Short
        return d[pos : pos + n]

    def _initial(self, d: bytes, start: int, pn_offset: int, end: int) -> None:
        keys = client_initial_keys(self._version, self._dcid or b"")
        # Header protection (RFC 9001 §5.4): the sample starts 4 bytes after the packet
        # number field, as if it were 4 bytes long.
        if pn_offset + 4 + 16 > end:
            raise NoClue("QUIC Initial too short to sample")
        mask = keys.header_mask(d[pn_offset + 4 : pn_offset + 20])
        first = d[start] ^ (mask[0] & 0x0F)
        pn_len = (first & 0x03) + 1
        pn = int.from_bytes(d[pn_offset : pn_offset + pn_len], "big") ^ int.from_bytes(
            mask[1 : 1 + pn_len], "big"
        )
        header = bytes([first]) + d[start + 1 : pn_offset] + pn.to_bytes(pn_len, "big")
        # Initial packet numbers are small: the truncated number is the full one.
        payload = keys.open(pn, header, d[pn_offset + pn_len : end])
        if payload is None:
            raise NoClue("QUIC Initial failed to decrypt")
        grew = False
        for offset, data in _crypto_frames(payload):
            grew |= self._add_crypto(offset, data)
        if grew:
            self._try_client_hello()

    def _add_crypto(self, offset: int, data: bytes) -> bool:
        """Store a CRYPTO chunk; return True if the contiguous prefix grew."""
        end = offset + len(data)
        if not data:
            return False
        if end > MAX_CRYPTO_STREAM:
            raise NoClue("CRYPTO stream beyond the sniffing limit")
        if end > len(self._crypto):
            self._crypto.extend(bytes(end - len(self._crypto)))
        self._crypto[offset:end] = data
        before = self._contiguous()
        merged: list[tuple[int, int]] = []
        lo, hi = offset, end
        for r_lo, r_hi in self._ranges:
            if r_hi < lo or r_lo > hi:
                merged.append((r_lo, r_hi))
            else:
                lo, hi = min(lo, r_lo), max(hi, r_hi)
        merged.append((lo, hi))
        merged.sort()
        if len(merged) > MAX_CRYPTO_RANGES:
            raise NoClue("CRYPTO stream too fragmented")
        self._ranges = merged
        return self._contiguous() > before

    def _contiguous(self) -> int:
        if self._ranges and self._ranges[0][0] == 0:
            return self._ranges[0][1]
        return 0

    def _try_client_hello(self) -> None:
        try:
            name = server_name_from_client_hello(bytes(self._crypto[: self._contiguous()]))
        except NeedMoreData:
            return
        self._result = SniffResult(PROTOCOL, name)


def sniff_quic(data: bytes) -> SniffResult:
    """Sniff one datagram, or several datagrams of one flow concatenated (Xray's convention)."""
    return QuicSniffer().feed(data)


def sniff_quic_packets(packets: Iterable[bytes]) -> SniffResult:
    """Sniff a flow's datagrams in arrival order; :class:`NeedMoreData` if they are not enough."""
    sniffer = QuicSniffer()
    for packet in packets:
        try:
            return sniffer.feed(packet)
        except NeedMoreData:
            continue
    raise NeedMoreData("ClientHello incomplete")
