"""The asyncio side of DNS: one UDP exchange with a server, with timeout and retries.

Each query uses its own connected UDP socket (a fresh random source port) and a
random ID; a datagram that is not a parseable response to that ID and question is
ignored, so stray or spoofed packets cannot complete a query.
"""

from __future__ import annotations

import asyncio
import secrets
import socket

from tunray.dns.message import Message, build_query, parse_message


class DNSTimeout(TimeoutError):
    """No answer after every attempt."""


class _Exchange(asyncio.DatagramProtocol):
    def __init__(self, qid: int, name: str, qtype: int) -> None:
        self.qid = qid
        self.name = name
        self.qtype = qtype
        self.waiter: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.waiter.done() or len(data) < 2 or int.from_bytes(data[:2], "big") != self.qid:
            return
        try:
            msg = parse_message(data)
        except ValueError:
            return
        if not msg.is_response or not msg.questions:
            return
        q = msg.questions[0]
        if q.name != self.name or q.qtype != self.qtype:
            return
        self.waiter.set_result(msg)

    def error_received(self, exc: Exception) -> None:
        if not self.waiter.done():
            self.waiter.set_exception(exc)


async def udp_query(
    server: tuple[str, int], name: str, qtype: int, *, budget: float = 4.0, attempts: int = 2
) -> Message:
    """Ask *server* for (*name*, *qtype*); resend every ``budget / attempts`` seconds."""
    loop = asyncio.get_running_loop()
    name = name.lower().rstrip(".")
    qid = secrets.randbits(16)
    payload = build_query(qid, name, qtype)
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    transport, proto = await loop.create_datagram_endpoint(
        lambda: _Exchange(qid, name, qtype), remote_addr=server, family=family
    )
    try:
        per_try = budget / max(1, attempts)
        for _ in range(max(1, attempts)):
            transport.sendto(payload)
            try:
                return await asyncio.wait_for(asyncio.shield(proto.waiter), per_try)
            except TimeoutError:
                continue
        raise DNSTimeout(f"no answer from {server[0]}:{server[1]} for {name}")
    finally:
        transport.close()
        if not proto.waiter.done():
            proto.waiter.cancel()
        elif not proto.waiter.cancelled():
            proto.waiter.exception()  # mark a late error as retrieved
