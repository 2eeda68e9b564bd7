"""``KernelByteLink`` waiting for its socket: the stack's one handshake timer gives up on each link in turn.

A link whose flow was accepted waits for the socket the listener will accept; it gives up
after ``handshake_timeout`` (counted, the flow refused), and one that gets its socket in time
is not woken by the timer later.  The stack is not attached to a device here: only its loop
and counters are used by this part.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest
from tunray.link import LinkClosed
from tunray.stack import StackOptions
from tunray_stack_system.kernel import listen
from tunray_stack_system.link import KernelByteLink
from tunray_stack_system.stack import SystemStack


async def test_each_waiting_link_gives_up_after_the_handshake_timeout_unless_its_socket_came() -> None:
    loop = asyncio.get_running_loop()
    stack = SystemStack(StackOptions(handshake_timeout=0.3))
    stack.loop = loop
    first, paired, late = (KernelByteLink(stack, h, True) for h in (-1, -2, -3))
    t0 = loop.time()
    gave_up: dict[str, float] = {}

    def watch(name: str, fut: asyncio.Future[None]) -> asyncio.Future[None]:
        fut.add_done_callback(lambda _f: gave_up.setdefault(name, loop.time() - t0))
        return fut

    first_accept = watch("first", asyncio.ensure_future(first.accept()))
    paired_accept = asyncio.ensure_future(paired.accept())
    await asyncio.sleep(0.15)
    late_start = loop.time() - t0
    late_accept = watch("late", asyncio.ensure_future(late.accept()))
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        paired._attach(a)
        await paired_accept  # its socket came: paired, and the timer must leave it alone
        for fut in (first_accept, late_accept):
            with pytest.raises(LinkClosed):
                await asyncio.wait_for(fut, 5.0)
        assert gave_up["first"] >= 0.29, f"the first link gave up after {gave_up['first']:.2f} s, not 0.3"
        assert gave_up["late"] >= late_start + 0.29, "a link that came 0.15 s later gave up with the first"
        assert stack.counters.get("tcp_handshake_timeout") == 2
        b.sendall(b"ping")
        assert await paired.read() == b"ping", "the paired link's socket was cut by the timer"
        assert not stack._waiting
    finally:
        paired.abort()
        b.close()
        await stack.aclose()


def test_accepted_sockets_have_no_nagle_delay() -> None:
    """The listener sets TCP_NODELAY, which the sockets it accepts inherit (the app side gets small writes at once)."""
    lsock = listen(ipaddress.ip_address("127.0.0.1"))
    lsock.listen(4)
    client = socket.create_connection(lsock.getsockname()[:2])
    try:
        conn, _ = lsock.accept()
        assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        conn.close()
    finally:
        client.close()
        lsock.close()
