"""Write the seed corpus (valid inputs per target) into tests/fuzz/corpus/TARGET/seed-N.

Run once when a target is added; the fuzzer's own finds are merged in beside them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tunray.dns.message import Record, build_query, build_response, parse_message
from tunray.net.address import Destination, Network
from tunray.sniff.samples import client_hello, crypto_frame, quic_initial, tls_records
from tunray_transports.grpcframe import encode_hunks
from tunray_transports.wsframe import encode_frame
from tunray_vless.codec.header import encode_response
from tunray_vless.codec.mux import FrameMeta, Status
from tunray_vless.codec.mux import encode_frame as mux_frame
from tunray_vless.codec.udp import encode_packets
from tunray_vless.codec.xudp import XudpWriter

CORPUS = Path(__file__).resolve().parent / "corpus"


def _tcp_record(kind: int, ports: int, seq: int, ack: int, flags: int, payload: bytes = b"") -> bytes:
    return bytes((kind, ports)) + seq.to_bytes(4) + ack.to_bytes(4) + bytes((flags, len(payload))) + payload


def seeds() -> dict[str, list[bytes]]:
    hello = client_hello("www.example.test")
    query = build_query(0x1234, "example.test", 1)
    dest = Destination(Network.UDP, "example.test", 53)
    xw = XudpWriter(dest)
    return {
        "sniff_http": [b"GET / HTTP/1.1\r\nHost: example.test:8080\r\n\r\n", b"CONNECT a:443 HTTP/1.1\r\n\r\n"],
        "sniff_tls": [tls_records(hello), tls_records(hello, (10, 30))],
        "sniff_quic": [b"\x00" + quic_initial(crypto_frame(0, hello), dcid=b"\x01" * 8)],
        "dns_message": [
            query,
            build_response(parse_message(query), [Record("example.test", 1, 60, ipaddress.ip_address("192.0.2.1"))]),
        ],
        "vless_response": [b"\x00" + encode_response() + b"body", b"\x00\x00\x02\x10\x01rest"],
        "vless_udp": [b"\x00" + encode_packets([b"abc", b"", b"x" * 300])],
        "xudp": [b"\x00" + xw.write(b"payload") + xw.write(b"more", Destination(Network.UDP, "192.0.2.1", 5353))],
        "vision": [b"\x01" + bytes((0x01,)) + b"\x00\x05\x00\x00hello", b"\x00plain"],
        "mux": [b"\x00" + mux_frame(FrameMeta(1, Status.KEEP, 1, dest), b"data")],
        "websocket": [b"\x00" + encode_frame(2, b"binary", None) + encode_frame(9, b"ping", None) + encode_frame(8, b"\x03\xe8", None)],
        "grpc": [b"\x00" + encode_hunks(b"hello")],
        "http_upgrade": [b"\x00HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"],
        "stack": [
            _tcp_record(0, 0, 1000, 0, 0x02)  # SYN
            + _tcp_record(0, 0, 1001, 2, 0x10)  # ACK of the SYN-ACK (isn = 1)
            + _tcp_record(0, 0, 1001, 2, 0x18, b"hello")
            + _tcp_record(0, 0, 1006, 2, 0x11),  # FIN
            _tcp_record(1, 1, 5, 0, 0x02) + _tcp_record(2, 2, 0, 0, 0, b"dns?") + _tcp_record(3, 0, 0, 0, 0, b"\x45\x00"),
        ],
    }


def main() -> None:
    for name, inputs in seeds().items():
        folder = CORPUS / name
        folder.mkdir(parents=True, exist_ok=True)
        for data in inputs:
            (folder / f"seed-{hashlib.sha1(data).hexdigest()[:12]}").write_bytes(data)


if __name__ == "__main__":
    main()
