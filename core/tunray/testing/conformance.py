"""Published conformance suites: every outbound (and stack) plugin's own tests call these.

``await check_outbound(outbound, echo_host)`` builds a runtime with the driver inbound
and *outbound* (an Xray outbound object) as the only outbound, then checks, through
real dispatcher calls, against a :mod:`tunray.testing.echo` server at *echo_host*:

* TCP: bytes echoed intact (SHA-256 over 4 MiB), the link accepted only after the
  upstream connected, the app's half-close propagated while the reply still flows,
  many concurrent flows;
* a dial to a closed port resets the app's link promptly (within the handshake timeout);
  with ``remote_dial=True`` (proxy outbounds: the server dials the target, after the
  app's link was accepted) that the app's flow is reset (never ended with a FIN, which
  would look like an empty reply) within the handshake timeout + 2 s;
* UDP (when the outbound declares it): echo, and replies from a second source
  address reach the app with that source (full cone), if ``cone=True``.

``await check_inbound(inbound, client)`` checks a listening inbound through a real
client (:mod:`tunray.testing.inboundcheck`); it is re-exported here.

``await check_stack(stack_cls)`` runs the stack suite of :mod:`tunray.testing.stackcheck`
(a real TUN in a throwaway namespace, the kernel as the app); it is re-exported here.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
import time
from collections.abc import Sequence
from typing import Any

from tunray.net.address import Destination, Network, parse_host
from tunray.testing.harness import driver_of, running
from tunray.testing.inboundcheck import check_inbound
from tunray.testing.stackcheck import check_stack

__all__ = ["check_inbound", "check_outbound", "check_stack"]

_HANDSHAKE = 3  # the policy's handshake timeout (seconds) in the runtime check_outbound builds


def _config(outbound: dict[str, Any]) -> dict[str, Any]:
    return {
        "log": {"loglevel": "none", "access": "none"},
        "inbounds": [{"protocol": "driver", "tag": "drv"}],
        "outbounds": [dict(outbound, tag="under-test")],
        "policy": {"levels": {"0": {"handshake": _HANDSHAKE, "connIdle": 30, "uplinkOnly": 2, "downlinkOnly": 2}}},
    }


async def _tcp_echo(drv: Any, host: str, port: int, size: int, source_port: int) -> None:
    app, task = drv.open_tcp(f"10.0.0.2:{source_port}", Destination(Network.TCP, parse_host(host), port))
    payload = os.urandom(size)

    async def send() -> None:
        for i in range(0, size, 65536):
            await app.send(payload[i : i + 65536])
        app.shutdown_write()

    sender = asyncio.create_task(send())
    got = await app.recv_all()
    await sender
    await task
    assert len(got) == size, f"echo returned {len(got)} of {size} bytes"
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest(), "echoed bytes differ"
    assert app.accepted, "the outbound never accepted the app's link"


async def check_outbound(
    outbound: dict[str, Any],
    echo_host: str,
    *,
    port: int = 7000,
    udp: bool = True,
    cone: bool = True,
    closed_port: int = 9,
    concurrency: int = 20,
    extra: Sequence[Any] = (),
    remote_dial: bool = False,
) -> None:
    """*extra*: plugin modules to register in-process (test a plugin without installing it).

    *remote_dial*: the outbound hands the target dial to a server (VLESS and other
    proxies), so a dial to *closed_port* fails there after the app's link was accepted;
    step 4 then only requires the flow to end (closed or reset) within the handshake
    timeout + 2 s.
    """
    async with running(_config(outbound), extra=extra) as rt:
        drv = driver_of(rt)
        # 1. bulk echo, intact
        await _tcp_echo(drv, echo_host, port, 4 << 20, 40000)
        # 2. half-close: the app stops sending, the server's data still arrives (source port)
        app, task = drv.open_tcp("10.0.0.2:40001", Destination(Network.TCP, parse_host(echo_host), port + 1))
        await app.send(struct.pack("!Q", 300_000))
        app.shutdown_write()
        data = await app.recv_all()
        await task
        from tunray.testing.echo import pattern

        assert len(data) == 300_000 and data == pattern(1 << 20)[:300_000], "source data wrong after half-close"
        # 3. concurrency
        await asyncio.gather(
            *(_tcp_echo(drv, echo_host, port, 64 * 1024, 41000 + i) for i in range(concurrency))
        )
        # 4. dial failure resets the app promptly and never accepts it
        started = time.monotonic()
        app, task = drv.open_tcp("10.0.0.2:40002", Destination(Network.TCP, parse_host(echo_host), closed_port))
        if remote_dial:
            # the server dials: the link is accepted first, then ends when the server gives up
            limit = _HANDSHAKE + 2.0
            await asyncio.wait_for(task, limit + 1.0)
            assert app.reset and not app.got_fin, "a failed remote dial must reset the app's flow"
            assert time.monotonic() - started < limit, "a refused remote dial must end within handshake + 2 s"
        else:
            await asyncio.wait_for(task, 5)
            assert app.reset and not app.accepted, "a failed dial must reset the app's link without accepting it"
            assert time.monotonic() - started < 3.5, "a refused dial must fail within the handshake timeout"
        if not udp:
            return
        # 5. UDP echo and full cone
        target = Destination(Network.UDP, parse_host(echo_host), port)
        papp, ptask = drv.open_udp("10.0.0.2:5353", target)
        papp.send(b"ping-1", target)
        reply = await asyncio.wait_for(papp.recv(), 5)
        assert reply.data == b"ping-1" and reply.peer == target, f"bad UDP echo {reply}"
        if cone:
            probe = Destination(Network.UDP, parse_host(echo_host), port + 1)
            papp.send(b"cone", probe)
            sources = set()
            for _ in range(2):
                r = await asyncio.wait_for(papp.recv(), 5)
                assert r.data == b"cone"
                sources.add(r.peer)
            assert sources == {probe, probe.with_port(port + 3)}, f"not full-cone: replies from {sources}"
        papp.close()
        await asyncio.wait_for(ptask, 5)
