"""The dispatcher through real runtimes: routing, sniffing, timeouts, isolation, access log."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tunray.log import AccessLog
from tunray.net.address import Destination, Network
from tunray.testing.harness import driver_of, running


@pytest.fixture
def echo_port(echo_server: int) -> Iterator[int]:
    yield echo_server


def config(rules: list[dict[str, Any]] | None = None, sniffing: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    inbound: dict[str, Any] = {"protocol": "driver", "tag": "drv"}
    if sniffing is not None:
        inbound["sniffing"] = sniffing
    cfg: dict[str, Any] = {
        "log": {"loglevel": "none", "access": "none"},
        "inbounds": [inbound],
        "outbounds": [{"protocol": "freedom", "tag": "direct"}, {"protocol": "blackhole", "tag": "block"}],
        "routing": {"rules": rules or []},
    }
    cfg.update(extra)
    return cfg


async def roundtrip(rt: Any, target: str, payload: bytes = b"ping") -> tuple[bool, bytes]:
    drv = driver_of(rt)
    app, task = drv.open_tcp("tcp:10.9.0.2:4000", target)
    await app.send(payload)
    app.shutdown_write()
    data = await app.recv_all()
    await asyncio.wait_for(task, 5)
    return app.accepted and not app.reset, data


async def test_default_outbound_is_the_first(echo_port: int) -> None:
    async with running(config()) as rt:
        assert await roundtrip(rt, f"tcp:127.0.0.1:{echo_port}") == (True, b"ping")


async def test_rule_to_blackhole_resets_without_accepting(echo_port: int) -> None:
    async with running(config([{"port": echo_port, "outboundTag": "block"}])) as rt:
        ok, data = await roundtrip(rt, f"tcp:127.0.0.1:{echo_port}")
    assert not ok and data == b""


async def test_rule_naming_a_missing_outbound_drops_the_flow(echo_port: int) -> None:
    out = io.StringIO()
    async with running(config([{"network": "tcp", "outboundTag": "nowhere"}]), access_log=AccessLog(out)) as rt:
        ok, _ = await roundtrip(rt, f"tcp:127.0.0.1:{echo_port}")
    assert not ok
    assert "rejected tcp:127.0.0.1" in out.getvalue() and "[drv -> nowhere]" in out.getvalue()


async def test_access_log_line_matches_xray(echo_port: int) -> None:
    out = io.StringIO()
    async with running(config(), access_log=AccessLog(out)) as rt:
        await roundtrip(rt, f"tcp:127.0.0.1:{echo_port}")
    line = out.getvalue().strip().splitlines()[0]
    # 2026/11/23 12:00:00.123456 from tcp:10.9.0.2:4000 accepted tcp:127.0.0.1:PORT [drv >> direct]
    date, clock, *rest = line.split(" ")
    assert len(date) == 10 and date[4] == "/" and len(clock) == 15
    assert " ".join(rest) == f"from tcp:10.9.0.2:4000 accepted tcp:127.0.0.1:{echo_port} [drv >> direct]"


async def test_http_sniffing_routes_by_host(echo_port: int) -> None:
    rules = [{"domain": ["full:blocked.test"], "outboundTag": "block"}, {"domain": ["domain:allowed.test"], "outboundTag": "direct"}]
    sniff = {"enabled": True, "destOverride": ["http", "tls"], "routeOnly": True}
    async with running(config(rules, sniff)) as rt:
        req = b"GET / HTTP/1.1\r\nHost: blocked.test\r\n\r\n"
        ok, _ = await roundtrip(rt, f"tcp:127.0.0.1:{echo_port}", req)
        # Sniffing needs the app's bytes, so the handshake was completed, then the flow reset.
        assert ok is False
        req = b"GET / HTTP/1.1\r\nHost: www.allowed.test\r\n\r\n"
        ok, data = await roundtrip(rt, f"tcp:127.0.0.1:{echo_port}", req)
        assert ok and data == req  # routeOnly: still connected to the IP; bytes replayed intact


async def test_sniffing_without_route_only_overrides_the_target(echo_port: int) -> None:
    sniff = {"enabled": True, "destOverride": ["http"]}
    async with running(config([], sniff)) as rt:
        req = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
        drv = driver_of(rt)
        app, task = drv.open_tcp("tcp:10.9.0.2:4001", f"tcp:192.0.2.1:{echo_port}")
        await app.send(req)
        app.shutdown_write()
        # The unreachable IP was replaced by the sniffed domain "localhost".
        assert await app.recv_all() == req
        await task


async def test_conn_idle_timeout_ends_the_flow(echo_port: int) -> None:
    cfg = config(policy={"levels": {"0": {"connIdle": 1}}})
    async with running(cfg) as rt:
        drv = driver_of(rt)
        app, task = drv.open_tcp("tcp:10.9.0.2:4002", f"tcp:127.0.0.1:{echo_port}")
        await app.send(b"x")
        assert await app.recv_exactly(1) == b"x"
        started = time.monotonic()
        await asyncio.wait_for(task, 5)
        assert 0.5 < time.monotonic() - started < 3


async def test_downlink_only_after_app_half_close() -> None:
    """After the app half-closes, a silent upstream gets downlinkOnly seconds, not connIdle."""
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # never answers, never closes

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = config(policy={"levels": {"0": {"connIdle": 30, "downlinkOnly": 1}}})
    try:
        async with running(cfg) as rt:
            drv = driver_of(rt)
            app, task = drv.open_tcp("tcp:10.9.0.2:4003", f"tcp:127.0.0.1:{port}")
            await app.send(b"bye")
            app.shutdown_write()
            started = time.monotonic()
            await asyncio.wait_for(task, 5)
            assert 0.5 < time.monotonic() - started < 2.5
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()


async def test_one_flow_failing_does_not_touch_others(echo_port: int) -> None:
    async with running(config()) as rt:
        drv = driver_of(rt)
        bad = [drv.open_tcp(f"tcp:10.9.0.2:{5000 + i}", "tcp:127.0.0.1:9")[1] for i in range(5)]
        good = await asyncio.gather(*(roundtrip(rt, f"tcp:127.0.0.1:{echo_port}", b"ok%d" % i) for i in range(5)))
        await asyncio.gather(*bad)
        assert good == [(True, b"ok%d" % i) for i in range(5)]


async def test_udp_flow_routed_by_network(echo_port: int) -> None:
    async with running(config([{"network": "udp", "outboundTag": "block"}])) as rt:
        drv = driver_of(rt)
        target = Destination.parse(f"127.0.0.1:{echo_port}", Network.UDP)
        app, task = drv.open_udp("10.9.0.2:53", target)
        app.send(b"q", target)
        await asyncio.wait_for(task, 5)
        assert app.closed


async def test_flow_hooks_are_called_once_per_flow(echo_port: int) -> None:
    import types

    from tunray import hookimpl

    seen: list[tuple[str, int]] = []
    mod = types.ModuleType("trtest_observer")

    @hookimpl
    def tunray_flow_opened(ctx: Any) -> None:
        seen.append(("opened", ctx.id))

    @hookimpl
    def tunray_flow_routed(ctx: Any, outbound_tag: str) -> None:
        seen.append((f"routed:{outbound_tag}", ctx.id))

    @hookimpl
    def tunray_flow_closed(ctx: Any, error: Any) -> None:
        seen.append((f"closed:{ctx.uplink_bytes}/{ctx.downlink_bytes}", ctx.id))

    mod.tunray_flow_opened = tunray_flow_opened  # type: ignore[attr-defined]
    mod.tunray_flow_routed = tunray_flow_routed  # type: ignore[attr-defined]
    mod.tunray_flow_closed = tunray_flow_closed  # type: ignore[attr-defined]
    async with running(config(), extra=[mod]) as rt:
        await roundtrip(rt, f"tcp:127.0.0.1:{echo_port}", b"12345")
    ids = {i for _, i in seen}
    assert len(ids) == 1
    assert [e for e, _ in seen] == ["opened", "routed:direct", "closed:5/5"]


async def test_traffic_stats_follow_policy_system_flags(echo_port: int) -> None:
    cfg = config(
        stats={},
        policy={"system": {"statsInboundUplink": True, "statsInboundDownlink": True, "statsOutboundUplink": True}},
    )
    async with running(cfg) as rt:
        await roundtrip(rt, f"tcp:127.0.0.1:{echo_port}", b"123456")
        await roundtrip(rt, f"tcp:127.0.0.1:{echo_port}", b"7890")
        assert rt.stats == {
            "inbound>>>drv>>>traffic>>>uplink": 10,
            "inbound>>>drv>>>traffic>>>downlink": 10,
            "outbound>>>direct>>>traffic>>>uplink": 10,
        }


async def test_udp_flow_ends_after_conn_idle(echo_port: int) -> None:
    async with running(config(policy={"levels": {"0": {"connIdle": 1}}})) as rt:
        drv = driver_of(rt)
        target = Destination.parse(f"127.0.0.1:{echo_port}", Network.UDP)
        app, task = drv.open_udp("10.9.0.2:54", target)
        app.send(b"q", target)
        assert (await asyncio.wait_for(app.recv(), 5)).data == b"q"
        started = time.monotonic()
        await asyncio.wait_for(task, 5)
        assert 0.5 < time.monotonic() - started < 2.5
