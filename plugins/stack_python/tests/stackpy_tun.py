"""A real TUN in a throwaway network namespace, the stack on its fd, and the test's servers.

The TUN is created in the root namespace (so this process keeps its fd), then moved
into ``trtest-<random>``; inside, it gets 10.77.0.1/24 and fd77::1/64.  A client run
with ``ip netns exec`` that connects to 10.77.0.2 or fd77::2 is routed into the TUN
and terminated by the stack.  Deleting the namespace removes the TUN.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunray.device import PacketDevice
from tunray.link import ByteLink, PacketLink
from tunray.net.tun import open_tun
from tunray.stack import Flow, Stack

CLIENT = str(Path(__file__).with_name("stackpy_client.py"))
SINK, SOURCE, ECHO, HALF, REFUSE, UDP_ECHO = 1000, 2000, 3000, 3001, 4000, 5000
TRAILER = b" (and this after your FIN)"
V4_PEER, V6_PEER = "10.77.0.2", "fd77::2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextlib.contextmanager
def tun_namespace(mtu: int, offload: bool) -> Iterator[tuple[PacketDevice, str]]:
    ns = f"trtest-{secrets.token_hex(4)}"
    _ip("netns", "add", ns)
    device = None
    try:
        device, ifname = open_tun(offload=offload, mtu=mtu)
        _ip("link", "set", ifname, "netns", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "link", "set", ifname, "mtu", str(mtu))
        _ip("-n", ns, "addr", "add", "10.77.0.1/24", "dev", ifname)
        _ip("-n", ns, "-6", "addr", "add", "fd77::1/64", "dev", ifname, "nodad")
        _ip("-n", ns, "link", "set", ifname, "up")
        yield device, ns
    finally:
        if device is not None:
            device.close()
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


async def run_client(ns: str, *args: str, limit: float = 120.0) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", ns, sys.executable, CLIENT, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode()[-2000:]
    result: dict[str, Any] = json.loads(out)
    return result


async def _sink(link: ByteLink) -> None:
    digest = hashlib.sha256()
    while data := await link.read(1 << 20):
        digest.update(data)
    await link.write(digest.hexdigest().encode())
    await link.aclose()


async def _source(link: ByteLink) -> None:
    head = b""
    while len(head) < 8:
        data = await link.read(8 - len(head))
        if not data:
            await link.aclose()
            return
        head += data
    size = int.from_bytes(head, "big")
    block = os.urandom(1048583)
    view = memoryview(block + block)
    digest = hashlib.sha256()
    pos = 0
    while size > 0:
        n = min(256 << 10, size)
        piece = view[pos:pos + n]
        digest.update(piece)
        await link.write(piece)
        pos = (pos + n) % len(block)
        size -= n
    await link.write(digest.hexdigest().encode())
    await link.write_eof()
    while await link.read():
        pass
    await link.aclose()


async def _echo(link: ByteLink, trailer: bytes) -> None:
    while data := await link.read():
        await link.write(data)
    if trailer:
        await link.write(trailer)  # sent after the app's FIN: the half-closed flow still receives
    await link.write_eof()
    await link.aclose()


async def _udp_echo(link: PacketLink) -> None:
    while (packet := await link.recv()) is not None:
        link.send(packet.data + f" from {packet.peer.host}".encode(), packet.peer)


async def handle(flow: Flow) -> None:
    link = flow.link
    if isinstance(link, PacketLink):
        await _udp_echo(link)
        return
    port = flow.destination.port
    if port == REFUSE:
        link.abort()
        return
    await link.accept()
    try:
        if port == SINK:
            await _sink(link)
        elif port == SOURCE:
            await _source(link)
        else:
            await _echo(link, TRAILER if port == HALF else b"")
    except ConnectionError:
        link.abort()


async def serve(stack: Stack) -> None:
    """Answer every flow until the stack closes; then cancel what is left."""
    tasks: set[asyncio.Task[None]] = set()
    try:
        async for flow in stack:
            task = asyncio.create_task(handle(flow))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class ImpairedDevice(PacketDevice):
    """Loses, duplicates and reorders packets in both directions (seeded, reproducible)."""

    def __init__(self, inner: PacketDevice, seed: int = 1, loss: float = 0.02, dup: float = 0.01,
                 reorder: float = 0.02) -> None:
        self.inner = inner
        self.mtu = inner.mtu
        self.offloads = inner.offloads
        self.rng = random.Random(seed)
        self.loss, self.dup, self.reorder = loss, dup, reorder
        self._in: list[bytes] = []  # duplicates and held-back packets to hand out next
        self._held_out: bytes | bytearray | memoryview | None = None
        self.stats = {"lost": 0, "duplicated": 0, "reordered": 0}

    def fileno(self) -> int:
        return self.inner.fileno()

    def _fate(self) -> str:
        r = self.rng.random()
        if r < self.loss:
            return "lost"
        r -= self.loss
        if r < self.dup:
            return "duplicated"
        r -= self.dup
        if r < self.reorder:
            return "reordered"
        return "ok"

    def read(self, size: int = 65546) -> bytes | None:
        while True:
            packet = self.inner.read(size)
            if packet is None:
                return self._in.pop(0) if self._in else None
            fate = self._fate()
            if fate != "ok":
                self.stats[fate] += 1
            if fate == "lost":
                continue
            if fate == "duplicated":
                self._in.append(packet)
            elif fate == "reordered":
                self._in.append(packet)  # handed out after the next packet
                continue
            if self._in and fate == "ok":
                self._in.append(packet)
                return self._in.pop(0)
            return packet

    def write(self, packet: bytes | bytearray | memoryview) -> bool:
        fate = self._fate()
        if fate != "ok":
            self.stats[fate] += 1
        if fate == "lost":
            return True
        if fate == "reordered" and self._held_out is None:
            self._held_out = packet
            return True
        self.inner.write(packet)
        if fate == "duplicated":
            self.inner.write(packet)
        if self._held_out is not None:
            held, self._held_out = self._held_out, None
            self.inner.write(held)
        return True

    def close(self) -> None:
        self.inner.close()
