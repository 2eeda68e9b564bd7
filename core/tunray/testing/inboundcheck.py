"""The conformance suite for listening inbounds: ``await check_inbound(inbound, client)``.

It runs a runtime with *inbound* (an Xray inbound object; the suite sets its ``tag``
and ``sniffing``) and two outbounds: ``probe``, which echoes every flow and records the
flow's context, and a ``blackhole``.  Routing sends ``blocked.test`` to the blackhole and
everything else from the inbound (by ``inboundTag``) to the probe.  Through *client*
(see :mod:`tunray.testing.proxyclients`) it checks, with real sockets on loopback:

1. bytes echoed intact (1 MiB, SHA-256) to an IP and to a domain destination, which
   reach the outbound unchanged, with the inbound's tag, the client's source address,
   the user (``email``) when *email* is given, and an access-log line
   ``accepted ... [under-test -> probe]``;
2. the app's half-close reaches the outbound while its reply still flows;
3. sniffing sees the HTTP ``Host`` of the first bytes (``routeOnly``: target unchanged);
4. a flow the router blackholes: with sniffing on (the app was answered so it could send
   its first bytes) it is reset; with sniffing off (a second runtime) it is refused by
   the inbound's protocol (the client gets its refusal reply, never a success);
5. many concurrent flows;
6. UDP (clients with ``udp``): datagrams to two destinations come back from each, full cone.

Clients that cannot choose the destination (dokodemo-door) skip 1's domain case and 4,
and the destination is the inbound's own (*fixed_destination*).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import sys
from typing import Any

from tunray import hookimpl
from tunray.config.schema import Schema
from tunray.link import ByteLink, PacketLink
from tunray.log import AccessLog
from tunray.net.address import Destination, Network, parse_host
from tunray.outbound import Outbound
from tunray.session import FlowContext
from tunray.testing.harness import running
from tunray.testing.proxyclients import ProxyRefused, parse_socks5_udp, socks5_udp

__all__ = ["ProbeOutbound", "check_inbound"]


class ProbeOutbound(Outbound):
    """Echoes every flow back and records its context (``runtime.probe_log``)."""

    protocol = "probe"
    settings_schema = Schema()

    async def process(self, ctx: FlowContext, link: ByteLink | PacketLink) -> None:
        seen: list[FlowContext] = self.runtime.__dict__.setdefault("probe_log", [])
        seen.append(ctx)
        if isinstance(link, PacketLink):
            while (packet := await link.recv()) is not None:
                link.send(packet.data, packet.peer)
            return
        await link.accept()
        while data := await link.read(65536):
            ctx.uplink_bytes += len(data)
            await link.write(data)
        await link.write_eof()


@hookimpl
def tunray_register_types(registry: Any) -> None:
    registry.add_outbound(ProbeOutbound)


def _config(inbound: dict[str, Any], *, sniffing: bool = True) -> dict[str, Any]:
    ib = dict(inbound, tag="under-test", sniffing={"enabled": sniffing, "destOverride": ["http", "tls"], "routeOnly": True})
    return {
        "log": {"loglevel": "warning"},
        "inbounds": [ib],
        "outbounds": [{"protocol": "probe", "tag": "probe"}, {"protocol": "blackhole", "tag": "deny"}],
        "routing": {
            "rules": [
                {"inboundTag": ["under-test"], "domain": ["full:blocked.test"], "outboundTag": "deny"},
                {"inboundTag": ["under-test"], "outboundTag": "probe"},
            ]
        },
        "policy": {"levels": {"0": {"handshake": 3, "connIdle": 10}}},
    }


async def _echo(client: Any, dest: Destination, payload: bytes) -> tuple[bytes, tuple[str, int]]:
    reader, writer = await client.open_tcp(dest)
    try:
        local = writer.get_extra_info("sockname")
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        got = await reader.read(-1)
        return got, local
    finally:
        writer.close()


async def check_inbound(
    inbound: dict[str, Any],
    client: Any,
    *,
    email: str = "",
    fixed_destination: Destination | None = None,
    concurrency: int = 20,
) -> None:
    """Run the suite; see the module docstring.  Raises AssertionError on the first failure."""
    out = io.StringIO()
    async with running(_config(inbound), extra=[sys.modules[__name__]], access_log=AccessLog(out)) as rt:
        log: list[FlowContext] = rt.__dict__.setdefault("probe_log", [])
        dests = [Destination(Network.TCP, parse_host("10.9.0.1"), 80)]
        if client.chooses_destination:
            dests.append(Destination(Network.TCP, "echo.test", 443))
        for dest in dests:
            payload = os.urandom(1 << 20)
            got, local = await _echo(client, dest, payload)
            assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest(), f"echo via {dest} differs"
            ctx = log[-1]
            want = dest if client.chooses_destination else fixed_destination
            if want is not None:
                assert ctx.target == want, f"outbound saw {ctx.target}, expected {want}"
            assert ctx.inbound_tag == "under-test" and ctx.outbound_tag == "probe", ctx.detour
            assert ctx.source.port == local[1], f"source {ctx.source} is not the client's {local}"
            assert ctx.user.email == email, f"user email {ctx.user.email!r}, expected {email!r}"
            assert ctx.uplink_bytes == len(payload)
        assert "accepted" in out.getvalue() and "[under-test -> probe]" in out.getvalue(), out.getvalue()

        # 2. half-close with a reply still flowing: the probe echoes after our FIN
        got, _ = await _echo(client, dests[0], b"half-close")
        assert got == b"half-close"

        # 3. sniffing
        request = b"GET / HTTP/1.1\r\nHost: sniffed.test\r\n\r\n"
        got, _ = await _echo(client, dests[0], request)
        assert got == request
        assert log[-1].sniffed_domain == "sniffed.test", f"sniffed {log[-1].sniffed_domain!r}"
        assert log[-1].target == (dests[0] if client.chooses_destination else fixed_destination or log[-1].target)

        # 4a. with sniffing, the app is answered before routing (it must send its first bytes):
        #     a blackholed flow then ends with a reset
        if client.chooses_destination:
            before = len(log)
            reader, writer = await client.open_tcp(Destination(Network.TCP, "blocked.test", 80))
            try:
                writer.write(b"GET / HTTP/1.1\r\nHost: blocked.test\r\n\r\n")
                reset = False
                try:
                    got = await asyncio.wait_for(reader.read(-1), 5)
                except ConnectionResetError:
                    reset = True
                assert reset, f"a blackholed sniffed flow must be reset, got a clean end after {got!r}"
            finally:
                writer.close()
            assert len(log) == before, "the blackholed flow reached the probe"
            assert "blocked.test:80 [under-test -> deny]" in out.getvalue(), out.getvalue()

        # 5. concurrency
        results = await asyncio.gather(*(_echo(client, dests[0], bytes([i]) * 4096) for i in range(concurrency)))
        assert all(got == bytes([i]) * 4096 for i, (got, _) in enumerate(results)), "concurrent echoes mixed up"

        # 6. UDP, full cone
        if getattr(client, "udp", False):
            await _udp(client, log)

    # 4b. without sniffing, routing runs before the app is answered: the protocol's refusal
    if client.chooses_destination:
        async with running(_config(inbound, sniffing=False), extra=[sys.modules[__name__]]) as rt:
            try:
                reader, writer = await client.open_tcp(Destination(Network.TCP, "blocked.test", 80))
            except ProxyRefused:
                pass
            else:
                writer.close()
                raise AssertionError("a blackholed flow was answered with success")
            assert not rt.__dict__.get("probe_log"), "the blackholed flow reached the probe"


async def _udp(client: Any, log: list[FlowContext]) -> None:
    control, sock, relay = await client.associate()
    loop = asyncio.get_running_loop()
    try:
        targets = [Destination(Network.UDP, parse_host("10.9.0.1"), 53), Destination(Network.UDP, "udp.test", 5353)]
        for i, target in enumerate(targets):
            sock.sendto(socks5_udp(target, b"dgram-%d" % i), relay)
            data = await asyncio.wait_for(loop.sock_recv(sock, 65535), 5)
            source, payload = parse_socks5_udp(data)
            assert payload == b"dgram-%d" % i and source == target, f"UDP reply {payload!r} from {source}"
        ctx = log[-1]
        assert ctx.target.network is Network.UDP and ctx.inbound_tag == "under-test"
        assert ctx.source.port == sock.getsockname()[1], f"UDP source {ctx.source}"
    finally:
        sock.close()
        control.close()
        await asyncio.sleep(0)

