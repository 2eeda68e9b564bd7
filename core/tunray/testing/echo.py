"""Echo servers for tests, runnable in a namespace: ``python -m tunray.testing.echo --port P``.

On every address (IPv4 and IPv6) it serves:

* ``P``   TCP echo: sends back what it reads; half-closes after the client does.
* ``P+1`` TCP source: reads an 8-byte big-endian size, sends that many bytes of a
  deterministic pattern (:func:`pattern`), closes.
* ``P+2`` TCP sink: reads to EOF, answers the SHA-256 of everything read, closes.
* ``P+5`` TCP counted sink: reads an 8-byte big-endian size and that many bytes, answers
  their SHA-256, closes (an upload that needs no half-close from the client).
* ``P+4`` TCP reset: sends :data:`RESET_PREFIX` (16 bytes), waits 100 ms for them to be
  acknowledged, then resets the connection (``SO_LINGER`` 0): a truncated download.
* ``P``   UDP echo: replies to each datagram from the same port.
* ``P+1`` UDP cone probe: replies to each datagram twice, once from ``P+1`` and once
  from ``P+3``, so a test can check full-cone NAT (the second reply's source differs).
Prints ``ready`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import socket
import struct
from collections.abc import Iterator

RESET_PREFIX = b"0123456789abcdef"
RESET_OFFSET = 4  # the reset server listens on P + 4
_LINGER_RESET = struct.pack("ii", 1, 0)


def pattern(n: int, seed: int = 0) -> bytes:
    """Deterministic pseudorandom bytes (fast: SHAKE-128)."""
    return hashlib.shake_128(seed.to_bytes(8, "big")).digest(n) if n else b""


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(262144):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        (size,) = struct.unpack("!Q", await reader.readexactly(8))
        block = pattern(1 << 20)
        sent = 0
        while sent < size:
            n = min(len(block), size - sent)
            writer.write(block[:n])
            await writer.drain()
            sent += n
        writer.write_eof()
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def _sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counted: bool = False) -> None:
    """Hash what arrives (to EOF, or the 8-byte size announced first when *counted*), answer the digest."""
    h = hashlib.sha256()
    try:
        left = struct.unpack("!Q", await reader.readexactly(8))[0] if counted else -1
        while left:
            data = await reader.read(min(left, 262144) if left > 0 else 262144)
            if not data:
                if counted:
                    return
                break
            h.update(data)
            left -= len(data) if counted else 0
        writer.write(h.digest())
        if counted:
            writer.write_eof()
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def _counted_sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _sink(reader, writer, counted=True)


async def _reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        writer.write(RESET_PREFIX)
        await writer.drain()
        await asyncio.sleep(0.1)
    except ConnectionError:
        pass
    finally:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        writer.transport.abort()


class _UdpEcho(asyncio.DatagramProtocol):
    def __init__(self, other: asyncio.DatagramTransport | None = None) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.other = other

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)
        if self.other is not None:
            self.other.sendto(data, addr)


def _dual_udp(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    return s


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    servers = [
        await asyncio.start_server(_echo, host=["0.0.0.0", "::"], port=port, reuse_address=True, backlog=4096),
        await asyncio.start_server(_source, host=["0.0.0.0", "::"], port=port + 1, reuse_address=True, backlog=4096),
        await asyncio.start_server(_sink, host=["0.0.0.0", "::"], port=port + 2, reuse_address=True, backlog=4096),
        await asyncio.start_server(_reset, host=["0.0.0.0", "::"], port=port + RESET_OFFSET, reuse_address=True, backlog=4096),
        await asyncio.start_server(_counted_sink, host=["0.0.0.0", "::"], port=port + 5, reuse_address=True, backlog=4096),
    ]
    await loop.create_datagram_endpoint(lambda: _UdpEcho(), sock=_dual_udp(port))
    other, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, sock=_dual_udp(port + 3))
    await loop.create_datagram_endpoint(lambda: _UdpEcho(other), sock=_dual_udp(port + 1))
    print("ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        for s in servers:
            s.close()


@contextlib.contextmanager
def local_echo(attempts: int = 8) -> Iterator[int]:
    """Run the echo servers in a child process on loopback; yield the base port.

    Picks a random base port below the kernel's ephemeral range (where thousands of
    TIME_WAIT client sockets may sit after load tests) and tries again if any of its
    ports is taken.
    """
    import random
    import subprocess
    import sys

    for _ in range(attempts):
        port = random.randrange(10000, 32000, 8)
        with subprocess.Popen(
            [sys.executable, "-m", "tunray.testing.echo", "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        ) as proc:
            assert proc.stdout is not None
            if b"ready" not in proc.stdout.readline():
                proc.wait()
                continue
            try:
                yield port
            finally:
                proc.terminate()
                proc.wait(5)
            return
    raise RuntimeError("could not start the echo servers on any port")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=7000)
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
