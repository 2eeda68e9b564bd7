"""Kernel-side clients for :mod:`tunray.testing.stackcheck`, run inside the test's namespace.

    python -S stackclient.py MODE ARGS...

Each mode drives the Linux TCP/IP stack (the "app") against the stack under test on the
other side of a TUN and prints JSON lines; the last line is the result.  The module uses
the standard library only and is run by file path, so a client starts in a few
milliseconds.  The server behaviours it expects are listed in ``stackcheck``.

Modes: ``upload``/``download`` (bulk with SHA-256), ``halfclose`` (our FIN first),
``serverhalf`` (the server's FIN first), ``connect`` (time the handshake, then echo),
``many`` (N flows open at once), ``udp`` (one socket, several destinations),
``ping`` (raw ICMP echo), ``inject`` (malformed packets, interactive over stdin).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import socket
import struct
import sys
import time
from typing import Any

BLOCK = os.urandom(1048583)  # a prime size, so repeated blocks never line up with segments
CHUNK = 256 << 10
ETH_P_ALL, ETH_P_IP, ETH_P_IPV6 = 0x0003, 0x0800, 0x86DD
PACKET_OUTGOING = 4
TCP, UDP = 6, 17


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def chunks(total: int) -> list[memoryview]:
    view = memoryview(BLOCK + BLOCK)
    out, pos = [], 0
    while total > 0:
        n = min(CHUNK, total)
        out.append(view[pos:pos + n])
        pos = (pos + n) % len(BLOCK)
        total -= n
    return out


def recv_all(s: socket.socket) -> bytes:
    parts = []
    while chunk := s.recv(65536):
        parts.append(chunk)
    return b"".join(parts)


def upload(host: str, port: int, size: int) -> dict[str, Any]:
    digest = hashlib.sha256()
    start = time.monotonic()
    with socket.create_connection((host, port), timeout=60) as s:
        for piece in chunks(size):
            digest.update(piece)
            s.sendall(piece)
        s.shutdown(socket.SHUT_WR)
        reply = recv_all(s)
    return {"sent": digest.hexdigest(), "reply": reply.decode(errors="replace"), "seconds": time.monotonic() - start}


def download(host: str, port: int, size: int) -> dict[str, Any]:
    """The server sends *size* bytes, then their SHA-256 in hex (64 bytes); we keep a sliding tail."""
    digest = hashlib.sha256()
    got = 0
    start = time.monotonic()
    with socket.create_connection((host, port), timeout=60) as s:
        s.sendall(size.to_bytes(8, "big"))
        buf = bytearray(1 << 20)
        tail = b""
        while n := s.recv_into(buf):
            combined = tail + buf[:n]
            body, tail = combined[:-64], bytes(combined[-64:])
            digest.update(body)
            got += len(body)
    return {"received": digest.hexdigest(), "server": tail.decode(errors="replace"), "bytes": got,
            "seconds": time.monotonic() - start}


def halfclose(host: str, port: int) -> dict[str, Any]:
    with socket.create_connection((host, port), timeout=20) as s:
        s.sendall(b"first half")
        s.shutdown(socket.SHUT_WR)
        return {"reply": recv_all(s).decode(errors="replace")}


def serverhalf(host: str, port: int, size: int) -> dict[str, Any]:
    """Read the server's greeting up to its FIN, then upload *size* bytes on our open half."""
    digest = hashlib.sha256()
    with socket.create_connection((host, port), timeout=20) as s:
        greeting = recv_all(s)
        for piece in chunks(size):
            digest.update(piece)
            s.sendall(piece)
        s.shutdown(socket.SHUT_WR)
        return {"greeting": greeting.decode(errors="replace"), "sent": digest.hexdigest(),
                "port": s.getsockname()[1]}


def connect(host: str, port: int, hold: bool = False) -> dict[str, Any]:
    """Time the handshake, then echo; with *hold*, report the connect and wait for a stdin line first."""
    start = time.monotonic()
    try:
        s = socket.create_connection((host, port), timeout=10)
    except ConnectionRefusedError:
        return {"refused": True, "connect_seconds": time.monotonic() - start}
    with s:
        took = time.monotonic() - start
        if hold:
            emit({"connected": took})
            sys.stdin.readline()
        try:
            s.sendall(b"sent before accept")
            s.shutdown(socket.SHUT_WR)
            echo = recv_all(s).decode(errors="replace")
        except ConnectionError as exc:  # reset or broken pipe
            echo = f"({type(exc).__name__})"
    return {"refused": False, "connect_seconds": took, "echo": echo}


async def _many(host: str, port: int, n: int) -> dict[str, Any]:
    import asyncio

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 256)), hard))
    # Connect all first, so that all n flows are open at the same time.
    conns = await asyncio.gather(*(asyncio.open_connection(host, port) for _ in range(n)))
    messages = [f"flow {i} ".encode() * (50 + i % 50) for i in range(n)]
    for (_reader, writer), msg in zip(conns, messages, strict=True):
        writer.write(msg)
        writer.write_eof()

    async def finish(i: int) -> bool:
        reader, writer = conns[i]
        data = await reader.read()
        writer.close()
        await writer.wait_closed()
        return data == messages[i]

    ok = await asyncio.gather(*(finish(i) for i in range(n)))
    return {"ok": sum(ok), "n": n}


def udp(port: int, hosts: list[str], expect: int) -> dict[str, Any]:
    s = socket.socket(socket.AF_INET6 if ":" in hosts[0] else socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.0)
    replies: set[tuple[str, int, str]] = set()
    for _attempt in range(3):
        for h in hosts:
            s.sendto(f"to {h}".encode(), (h, port))
        try:
            while len(replies) < expect:
                data, addr = s.recvfrom(2048)
                replies.add((addr[0], addr[1], data.decode(errors="replace")))
        except TimeoutError:
            continue
        break
    local = s.getsockname()[1]
    s.close()
    return {"port": local, "replies": sorted(replies)}


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ping(host: str, count: int) -> dict[str, Any]:
    v6 = ":" in host
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_RAW,
                      socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
    s.settimeout(1.0)
    ident = os.getpid() & 0xFFFF
    got = 0
    for seq in range(count):
        msg = bytes((128 if v6 else 8, 0, 0, 0)) + struct.pack("!HH", ident, seq) + b"tunray ping"
        if not v6:  # the kernel computes ICMPv6 checksums itself
            msg = msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:]
        s.sendto(msg, (host, 0))
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                data = s.recv(2048)
            except TimeoutError:
                break
            icmp = data if v6 else data[(data[0] & 15) * 4:]
            if icmp[0] == (129 if v6 else 0) and icmp[4:] == msg[4:]:
                got += 1
                break
    s.close()
    return {"replies": got}


# --- malformed packets -----------------------------------------------------------------------------


def ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, *, total: int | None = None, ihl: int = 5,
         version: int = 4, bad_csum: bool = False) -> bytes:
    head = struct.pack("!BBHHHBBH4s4s", version << 4 | ihl, 0, total or 20 + len(payload), 0x1234, 0x4000, 64,
                       proto, 0, src, dst)
    csum = checksum(head) ^ (0x5555 if bad_csum else 0)
    return head[:10] + struct.pack("!H", csum) + head[12:] + payload


def ipv6(src: bytes, dst: bytes, proto: int, payload: bytes, *, plen: int | None = None) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload) if plen is None else plen, proto, 64, src, dst) + payload


def pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def tcp(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int, data: bytes, *,
        offset: int = 5, bad_csum: bool = False) -> bytes:
    head = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, offset << 4, flags, 65535, 0, 0)
    seg = head + data
    csum = checksum(pseudo(src, dst, TCP, len(seg)) + seg) ^ (0x00FF if bad_csum else 0)
    return seg[:16] + struct.pack("!H", csum) + seg[18:]


def udp_dgram(src: bytes, dst: bytes, sport: int, dport: int, data: bytes, *, csum: int | None = None,
              length: int | None = None) -> bytes:
    head = struct.pack("!HHHH", sport, dport, length or 8 + len(data), 0)
    if csum is None:
        csum = checksum(pseudo(src, dst, UDP, len(head) + len(data)) + head + data) or 0xFFFF
    return head[:6] + struct.pack("!H", csum) + data


def captured(cap: socket.socket) -> list[bytes]:
    """Every packet our kernel sent into the TUN since *cap* was bound."""
    out: list[bytes] = []
    while True:
        try:
            pkt, addr = cap.recvfrom(70000)
        except BlockingIOError:
            return out
        if addr[2] == PACKET_OUTGOING and len(pkt) >= 40:
            out.append(pkt)


def last_outgoing(packets: list[bytes], sport: int) -> tuple[int, int]:
    """(next sequence number, ack) of the newest TCP segment among *packets* from port *sport*."""
    found: tuple[int, int] | None = None
    for pkt in packets:
        if pkt[0] >> 4 == 4:
            l4, end = (pkt[0] & 15) * 4, struct.unpack_from("!H", pkt, 2)[0] or len(pkt)
            proto = pkt[9]
        else:
            l4, end, proto = 40, 40 + struct.unpack_from("!H", pkt, 4)[0], pkt[6]
        if proto != TCP or struct.unpack_from("!H", pkt, l4)[0] != sport:
            continue
        seq, ack = struct.unpack_from("!II", pkt, l4 + 4)
        flags = pkt[l4 + 13]
        size = end - l4 - (pkt[l4 + 12] >> 4) * 4 + (flags & 1) + (flags >> 1 & 1)
        found = ((seq + size) & 0xFFFFFFFF, ack)
    if found is None:
        raise SystemExit(f"no outgoing segment from port {sport} was captured")
    return found


def crafted(conn: socket.socket, sent: list[bytes]) -> list[bytes]:
    """Malformed packets a conforming stack must drop (and count), some aimed at the live flow *conn*."""
    local, remote = conn.getsockname(), conn.getpeername()
    v6 = conn.family == socket.AF_INET6
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    src, dst = socket.inet_pton(fam, local[0]), socket.inet_pton(fam, remote[0])
    lp, rp = local[1], remote[1]
    seq, ack = last_outgoing(sent, lp)
    evil = tcp(src, dst, lp, rp, seq, ack, 0x18, b"EVIL", bad_csum=True)  # in window, wrong checksum
    good_evil = tcp(src, dst, lp, rp, seq, ack, 0x18, b"EVIL")
    syn = tcp(src, dst, 40000, 9998, 1, 0, 0x02, b"", bad_csum=True)
    if not v6:
        return [
            b"\x45",
            ipv4(src, dst, TCP, good_evil)[:12],
            ipv4(src, dst, TCP, good_evil, ihl=4),
            ipv4(src, dst, TCP, good_evil, version=5),
            ipv4(src, dst, UDP, udp_dgram(src, dst, 40001, 9999, b"EVIL"), bad_csum=True),
            ipv4(src, dst, TCP, good_evil, total=20 + len(good_evil) + 100),
            ipv4(src, dst, TCP, evil),
            ipv4(src, dst, TCP, good_evil[:12]),
            ipv4(src, dst, TCP, tcp(src, dst, lp, rp, seq, ack, 0x18, b"EVIL", offset=4)),
            ipv4(src, dst, TCP, tcp(src, dst, lp, rp, seq, ack, 0x18, b"EVIL", offset=15)),
            ipv4(src, dst, TCP, syn),
            ipv4(src, dst, UDP, udp_dgram(src, dst, 40001, 9999, b"EVIL", csum=0x1234)),
            ipv4(src, dst, UDP, udp_dgram(src, dst, 40001, 9999, b"EVIL", length=200)),
            ipv4(src, dst, UDP, b"\x9c\x41\x27"),
        ]
    return [
        ipv6(src, dst, TCP, good_evil)[:20],
        ipv6(src, dst, TCP, good_evil, plen=len(good_evil) + 100),
        ipv6(src, dst, TCP, evil),
        ipv6(src, dst, TCP, good_evil[:12]),
        ipv6(src, dst, TCP, syn),
        ipv6(src, dst, UDP, udp_dgram(src, dst, 40001, 9999, b"EVIL", csum=0)),  # zero is illegal over IPv6
        ipv6(src, dst, UDP, udp_dgram(src, dst, 40001, 9999, b"EVIL", csum=0x1234)),
        ipv6(src, dst, UDP, udp_dgram(src, dst, 40001, 9999, b"EVIL", length=300)),
    ]


def fuzz(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        size = rng.randrange(1, 160)
        first = rng.choice((0x45, 0x46, 0x60, 0x4F, rng.randrange(256)))
        out.append(bytes((first,)) + rng.randbytes(size - 1))
    return out


def inject(ifname: str, host4: str, host6: str, port: int, seed: int) -> dict[str, Any]:
    """Open a v4 and a v6 echo flow, inject garbage beside them when told, then check both flows."""
    cap = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    cap.bind((ifname, ETH_P_ALL))
    conns = [socket.create_connection((h, port), timeout=20) for h in (host4, host6)]
    for c in conns:
        c.sendall(b"hello")
        got = b""
        while len(got) < 5:
            got += c.recv(5 - len(got))
        assert got == b"hello", got
    time.sleep(0.25)  # let delayed ACKs go out, so the captured ack is current
    cap.setblocking(False)
    emit({"ready": True})
    sys.stdin.readline()
    sent = captured(cap)
    cap.close()
    packets = [p for c in conns for p in crafted(c, sent)]
    noise = fuzz(200, seed)
    out = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM)
    for p in packets + noise:
        out.sendto(p, (ifname, ETH_P_IPV6 if p[0] >> 4 == 6 else ETH_P_IP))
    out.close()
    emit({"crafted": len(packets), "noise": len(noise)})
    sys.stdin.readline()
    intact = []
    for c in conns:
        data = b"".join(chunks(256 << 10))
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
        intact.append(recv_all(c) == data)
        c.close()
    return {"intact": intact}


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "upload":
        result = upload(args[0], int(args[1]), int(args[2]))
    elif mode == "download":
        result = download(args[0], int(args[1]), int(args[2]))
    elif mode == "halfclose":
        result = halfclose(args[0], int(args[1]))
    elif mode == "serverhalf":
        result = serverhalf(args[0], int(args[1]), int(args[2]))
    elif mode == "connect":
        result = connect(args[0], int(args[1]), args[2:] == ["hold"])
    elif mode == "many":
        import asyncio  # only here: importing it costs more than the other modes take

        result = asyncio.run(_many(args[0], int(args[1]), int(args[2])))
    elif mode == "udp":
        result = udp(int(args[0]), args[1].split(","), int(args[2]))
    elif mode == "ping":
        result = ping(args[0], int(args[1]))
    elif mode == "inject":
        result = inject(args[0], args[1], args[2], int(args[3]), int(args[4]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    emit(result)


if __name__ == "__main__":
    main()
