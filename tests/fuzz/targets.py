"""Fuzz targets: every parser a remote party feeds, one function per parser.

Each target takes the fuzzer's bytes and drives one parser the way tunray does:
stream decoders get the input in chunks whose sizes come from the input itself (so
split points are fuzzed too).  A target may only end in the parser's documented
errors (listed per target); anything else escaping is a finding.  Each target also
checks that what the parser holds back stays within its stated bound (no unbounded
growth), so a peer cannot make tunray buffer without limit by sending garbage.

Run one with ``python tests/fuzz/run.py TARGET`` (atheris, coverage-guided); the
corpus in ``tests/fuzz/corpus/TARGET`` is replayed by ``tests/unit/test_fuzz_corpus.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

from tunray.dns.message import DNSFormatError, parse_message
from tunray.net.address import Destination, Network
from tunray.sniff.http import sniff_http
from tunray.sniff.quic import QuicSniffer
from tunray.sniff.result import NeedMoreData, NoClue
from tunray.sniff.tls import sniff_tls
from tunray.stackcore import TcpOpened
from tunray.testing.stackclient import TCP, UDP, ipv4, ipv6, tcp, udp_dgram
from tunray_stack_python.core import Core, CoreConfig
from tunray_transports.grpcframe import GrpcFramingError, MessageReader
from tunray_transports.http1 import MAX_HEAD, HandshakeError, ResponseReader
from tunray_transports.wsframe import FrameReader, ProtocolError
from tunray_vless.codec.errors import CodecError
from tunray_vless.codec.header import ResponseParser
from tunray_vless.codec.mux import FrameDecoder
from tunray_vless.codec.udp import PacketDecoder
from tunray_vless.codec.vision import TrafficState, VisionUnpadder
from tunray_vless.codec.xudp import XudpReader

Target = Callable[[bytes], None]
USER = uuid.UUID("b831381d-6324-4d53-ad4f-8cda48b30811")
SOURCE = Destination(Network.UDP, "example.test", 53)


def chunks(data: bytes) -> Iterator[bytes]:
    """Split *data* as a peer's reads would: the first byte seeds the chunk sizes."""
    if not data:
        return
    seed, rest = data[0], data[1:]
    pos = 0
    n = 0
    while pos < len(rest):
        size = 1 + ((seed * 31 + n * 17) % 97 if seed else len(rest))
        yield rest[pos : pos + size]
        pos += size
        n += 1


def sniff_http_target(data: bytes) -> None:
    try:
        sniff_http(data)
    except (NoClue, NeedMoreData):
        pass


def sniff_tls_target(data: bytes) -> None:
    try:
        sniff_tls(data)
    except (NoClue, NeedMoreData):
        pass


def sniff_quic_target(data: bytes) -> None:
    sniffer = QuicSniffer()
    for datagram in chunks(data):
        try:
            sniffer.feed(datagram)
            return
        except NeedMoreData:
            continue
        except NoClue:
            return


def dns_message_target(data: bytes) -> None:
    try:
        parse_message(data)
    except DNSFormatError:
        pass


def vless_response_target(data: bytes) -> None:
    parser = ResponseParser()
    try:
        for part in chunks(data):
            if parser.feed(part) is not None:
                return
            assert len(parser._buf) <= 2 + 255, "response header buffer beyond 257 bytes"
    except CodecError:
        pass


def vless_udp_target(data: bytes) -> None:
    decoder = PacketDecoder()
    for part in chunks(data):
        decoder.feed(part)
        assert decoder.pending <= 2 + 0xFFFF, "more than one length-prefixed packet held back"


def xudp_target(data: bytes) -> None:
    reader = XudpReader(SOURCE)
    try:
        for part in chunks(data):
            reader.feed(part)
            assert len(reader._buf) <= 2 + 0xFFFF + 2 + 0xFFFF, "XUDP buffer beyond one frame"
    except CodecError:
        pass


def vision_target(data: bytes) -> None:
    # half the inputs start with the user id, so the padding parser is reached
    prefix = USER.bytes if data[:1] and data[0] & 1 else b""
    unpadder = VisionUnpadder(TrafficState(USER))
    try:
        for part in chunks(data):
            unpadder.feed(prefix + part)
            prefix = b""
            assert len(unpadder._buf) <= 21, "Vision holds back more than a user id and a block header"
    except CodecError:
        pass


def mux_target(data: bytes) -> None:
    decoder = FrameDecoder()
    try:
        for part in chunks(data):
            decoder.feed(part)
            assert len(decoder._buf) <= 2 + 0xFFFF + 2 + 0xFFFF, "mux buffer beyond one frame"
    except CodecError:
        pass


def websocket_target(data: bytes) -> None:
    reader = FrameReader()
    try:
        for part in chunks(data):
            reader.feed(part)
            assert len(reader._buf) < 14, "more than a partial frame header held back"
            assert len(reader._control) <= 125, "a control payload beyond 125 bytes"
    except ProtocolError:
        pass


def grpc_target(data: bytes) -> None:
    reader = MessageReader(max_message=64 << 10)
    try:
        for part in chunks(data):
            reader.feed(part)
            assert reader.pending <= 5 + (64 << 10), "gRPC reader beyond its max message"
    except GrpcFramingError:
        pass


def http_upgrade_target(data: bytes) -> None:
    reader = ResponseReader()
    try:
        for part in chunks(data):
            if reader.feed(part) is not None:
                return
            assert len(reader._buf) <= MAX_HEAD, "response head buffer beyond MAX_HEAD"
    except HandshakeError:
        pass


# --- the stack's packet path ------------------------------------------------------------------------

APP4, NET4 = bytes((10, 0, 0, 2)), bytes((203, 0, 113, 10))
APP6, NET6 = bytes.fromhex("fd00" + "00" * 13 + "02"), bytes.fromhex("2001db8" + "0" * 23 + "10")
MAX_FLOWS = 8


def _packets(data: bytes) -> Iterator[bytes]:
    """Structured packets with valid checksums, so the fuzzer reaches TCP/UDP state, not just IP parsing.

    Each record: kind (1 byte), ports selector (1), seq (4), ack (4), flags (1), window-ish
    length (1), then that many payload bytes.  kind & 3: 0 = IPv4 TCP, 1 = IPv6 TCP,
    2 = IPv4 UDP, 3 = raw bytes as an IP packet (the garbage path).
    """
    pos = 0
    while pos + 12 <= len(data):
        kind, ports = data[pos], data[pos + 1]
        seq = int.from_bytes(data[pos + 2 : pos + 6])
        ack = int.from_bytes(data[pos + 6 : pos + 10])
        flags, length = data[pos + 10], data[pos + 11]
        payload = data[pos + 12 : pos + 12 + length]
        pos += 12 + length
        sport, dport = 40000 + (ports & 7), 80 + (ports >> 3 & 3)
        if kind & 3 == 0:
            yield ipv4(APP4, NET4, TCP, tcp(APP4, NET4, sport, dport, seq, ack, flags, payload))
        elif kind & 3 == 1:
            yield ipv6(APP6, NET6, TCP, tcp(APP6, NET6, sport, dport, seq, ack, flags, payload))
        elif kind & 3 == 2:
            yield ipv4(APP4, NET4, UDP, udp_dgram(APP4, NET4, sport, dport, payload))
        else:
            yield payload


def stack_target(data: bytes) -> None:
    core = Core(CoreConfig(max_flows=MAX_FLOWS, tcp_buffer=64 << 10, send_high_water=64 << 10), isn=lambda: 1)
    now = 1000.0
    for packet in _packets(data):
        now += 0.01
        core.feed(packet, now)
        for event in core.take_events():
            if isinstance(event, TcpOpened):
                core.tcp_accept(event.handle, now)
        core.drain(now)
        core.handle_timer(now)
        assert len(core.conns) + len(core.udp) <= 2 * MAX_FLOWS, "flows beyond max_flows"
        for conn in core.conns.values():
            assert len(conn.rcvbuf) <= 2 * (64 << 10), "a connection buffered beyond its window"
    core.reset_all(now)


TARGETS: dict[str, Target] = {
    "sniff_http": sniff_http_target,
    "sniff_tls": sniff_tls_target,
    "sniff_quic": sniff_quic_target,
    "dns_message": dns_message_target,
    "vless_response": vless_response_target,
    "vless_udp": vless_udp_target,
    "xudp": xudp_target,
    "vision": vision_target,
    "mux": mux_target,
    "websocket": websocket_target,
    "grpc": grpc_target,
    "http_upgrade": http_upgrade_target,
    "stack": stack_target,
}
