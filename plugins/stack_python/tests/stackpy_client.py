"""The kernel-side client for the TUN interop tests, run inside the test's network namespace.

Usage: ``python stackpy_client.py MODE HOST PORT [ARGS...]``; prints one JSON object.
The server side (the stack under test, in the parent process) answers by port:
1000 sink (replies with the SHA-256 of what it got), 2000 source (sends N bytes, then
its SHA-256 after a newline-free 64-byte trailer), 3000 echo, 4000 refused (lazy abort).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import sys
import time

BLOCK = os.urandom(1048583)  # a prime-ish size so repeated blocks never align with segments
CHUNK = 256 << 10


def stream(total: int) -> list[memoryview]:
    view = memoryview(BLOCK + BLOCK)
    out = []
    pos = 0
    while total > 0:
        n = min(CHUNK, total)
        out.append(view[pos:pos + n])
        pos = (pos + n) % len(BLOCK)
        total -= n
    return out


def family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def upload(host: str, port: int, size: int) -> dict[str, object]:
    digest = hashlib.sha256()
    start = time.monotonic()
    with socket.create_connection((host, port), timeout=60) as s:
        for piece in stream(size):
            digest.update(piece)
            s.sendall(piece)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    elapsed = time.monotonic() - start
    return {"sent": digest.hexdigest(), "reply": reply.decode(), "seconds": elapsed}


def download(host: str, port: int, size: int) -> dict[str, object]:
    digest = hashlib.sha256()
    got = 0
    start = time.monotonic()
    with socket.create_connection((host, port), timeout=60) as s:
        s.sendall(size.to_bytes(8, "big"))
        buf = bytearray(1 << 20)
        tail = b""
        while True:
            n = s.recv_into(buf)
            if not n:
                break
            data = bytes(buf[:n])
            # The last 64 bytes are the server's hex digest; keep a sliding tail.
            combined = tail + data
            body, tail = combined[:-64], combined[-64:]
            digest.update(body)
            got += len(body)
    elapsed = time.monotonic() - start
    return {"received": digest.hexdigest(), "server": tail.decode(), "bytes": got, "seconds": elapsed}


def halfclose(host: str, port: int) -> dict[str, object]:
    with socket.create_connection((host, port), timeout=20) as s:
        s.sendall(b"first half")
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    return {"reply": reply.decode()}


def refused(host: str, port: int) -> dict[str, object]:
    start = time.monotonic()
    try:
        socket.create_connection((host, port), timeout=20).close()
    except ConnectionRefusedError:
        return {"refused": True, "seconds": time.monotonic() - start}
    return {"refused": False, "seconds": time.monotonic() - start}


async def _many(host: str, port: int, n: int) -> dict[str, object]:
    async def one(i: int) -> bool:
        reader, writer = await asyncio.open_connection(host, port)
        msg = f"flow {i} ".encode() * 100
        writer.write(msg)
        await writer.drain()
        writer.write_eof()
        data = await reader.read()
        writer.close()
        await writer.wait_closed()
        return data == msg

    results = await asyncio.gather(*(one(i) for i in range(n)))
    return {"ok": sum(results), "n": n}


def udp(hosts: list[str], port: int) -> dict[str, object]:
    s = socket.socket(family(hosts[0]), socket.SOCK_DGRAM)
    s.settimeout(5)
    replies: dict[str, str] = {}
    for _attempt in range(3):
        for h in hosts:
            s.sendto(f"to {h}".encode(), (h, port))
        try:
            while len(replies) < len(hosts):
                data, addr = s.recvfrom(2048)
                replies[addr[0]] = data.decode()
        except TimeoutError:
            continue
        break
    s.close()
    return {"replies": replies}


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ping(host: str, count: int) -> dict[str, object]:
    """Echo requests over a raw socket; counts the matching replies."""
    v6 = ":" in host
    s = socket.socket(family(host), socket.SOCK_RAW, socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
    s.settimeout(2)
    ident = os.getpid() & 0xFFFF
    got = 0
    for seq in range(count):
        msg = bytes((128 if v6 else 8, 0, 0, 0)) + ident.to_bytes(2, "big") + seq.to_bytes(2, "big") + b"tunray"
        if not v6:  # the kernel fills the ICMPv6 checksum itself
            msg = msg[:2] + _csum(msg).to_bytes(2, "big") + msg[4:]
        s.sendto(msg, (host, 0))
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                data = s.recv(2048)
            except TimeoutError:
                break
            icmp = data if v6 else data[(data[0] & 15) * 4:]
            if icmp[0] == (129 if v6 else 0) and icmp[4:8] == msg[4:8] and icmp[8:] == b"tunray":
                got += 1
                break
    s.close()
    return {"replies": got}


def main() -> None:
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "upload":
        result = upload(host, port, int(sys.argv[4]))
    elif mode == "download":
        result = download(host, port, int(sys.argv[4]))
    elif mode == "halfclose":
        result = halfclose(host, port)
    elif mode == "refused":
        result = refused(host, port)
    elif mode == "many":
        result = asyncio.run(_many(host, port, int(sys.argv[4])))
    elif mode == "ping":
        result = ping(host, port)
    elif mode == "udp":
        result = udp(host.split(","), port)
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
