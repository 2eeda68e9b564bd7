"""A stand-alone test app (stdlib only): TCP and UDP echo checks against tunray.testing.echo.

Used in-process from a thread inside the client namespace, and as a script
(``python tun_app.py tcp|udp|refused HOST PORT``) run as another user.
"""

from __future__ import annotations

import os
import socket
import sys
import time


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def tcp_echo(host: str, port: int, size: int = 256 * 1024, timeout: float = 10.0) -> int:
    """Send *size* random bytes to a TCP echo server and check they come back; returns the byte count."""
    payload = os.urandom(size)
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = bytearray()
        while chunk := s.recv(65536):
            got += chunk
    if bytes(got) != payload:
        raise AssertionError(
            f"TCP echo via {host}:{port}: got {len(got)} bytes, sent {size}, equal={bytes(got) == payload}"
        )
    return len(got)


def tcp_until_end(host: str, port: int, request: bytes = b"", timeout: float = 10.0) -> tuple[bytes, str, float]:
    """Connect, send *request*, read until the end; return (bytes, "fin" or "reset", seconds to the end)."""
    start = time.monotonic()
    got = bytearray()
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        if request:
            s.sendall(request)
        try:
            while chunk := s.recv(65536):
                got += chunk
        except ConnectionResetError:
            return bytes(got), "reset", time.monotonic() - start
    return bytes(got), "fin", time.monotonic() - start


def udp_echo(host: str, port: int, count: int = 3, timeout: float = 3.0, check_source: bool = True) -> int:
    """Send *count* datagrams to a UDP echo server; each must come back (from (host, port))."""
    with socket.socket(_family(host), socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        for i in range(count):
            msg = b"tunray-udp-%d-" % i + os.urandom(16)
            for _attempt in range(3):
                s.sendto(msg, (host, port))
                try:
                    data, peer = s.recvfrom(65536)
                except TimeoutError:
                    continue
                if data != msg:
                    raise AssertionError(f"UDP echo via {host}:{port}: wrong payload")
                same = socket.inet_pton(_family(host), peer[0]) == socket.inet_pton(_family(host), host)
                if peer[1] != port or (check_source and not same):
                    raise AssertionError(f"UDP echo reply from {peer}, expected {host}:{port}")
                break
            else:
                raise AssertionError(f"UDP echo via {host}:{port}: no reply to datagram {i}")
    return count


def tcp_refused(host: str, port: int, timeout: float = 5.0) -> float:
    """Connect to a closed port; return how long until the app saw the refusal/reset."""
    start = time.monotonic()
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((host, port))
            s.sendall(b"x")
            if s.recv(1) != b"":
                raise AssertionError("a closed port answered with data")
        except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError):
            pass
    return time.monotonic() - start


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ping(host: str, ident: int = 0x7172, seq: int = 1, timeout: float = 3.0) -> tuple[str, float]:
    """One ICMP echo over a raw socket; returns (reply source, round-trip seconds)."""
    v6 = ":" in host
    payload = b"tunray-ping-" + os.urandom(8)
    kind = 128 if v6 else 8
    header = bytes([kind, 0, 0, 0]) + ident.to_bytes(2, "big") + seq.to_bytes(2, "big")
    if not v6:  # the kernel fills the ICMPv6 checksum itself
        csum = _checksum(header + payload)
        header = header[:2] + csum.to_bytes(2, "big") + header[4:]
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    with socket.socket(_family(host), socket.SOCK_RAW, proto) as s:
        s.settimeout(timeout)
        start = time.monotonic()
        s.sendto(header + payload, (host, 0))
        while True:
            data, peer = s.recvfrom(65536)
            if not v6:
                data = data[(data[0] & 0x0F) * 4 :]
            if len(data) < 8 or data[0] != (129 if v6 else 0):
                continue
            if int.from_bytes(data[4:6], "big") != ident or int.from_bytes(data[6:8], "big") != seq:
                continue
            if data[8:] != payload:
                raise AssertionError("echo reply payload differs")
            if not v6 and _checksum(data) != 0:
                raise AssertionError("echo reply checksum is wrong")
            return peer[0], time.monotonic() - start


def main(argv: list[str]) -> int:
    what, host, port = argv[0], argv[1], int(argv[2])
    if what == "tcp":
        print(tcp_echo(host, port))
    elif what == "udp":
        print(udp_echo(host, port, check_source=False))
    else:
        print(tcp_refused(host, port))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
