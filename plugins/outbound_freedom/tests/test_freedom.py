"""freedom against real echo servers: loopback, and a server namespace over veth."""

from __future__ import annotations

import asyncio
import time

import pytest
from tunray.config.errors import ConfigError
from tunray.config.model import build_config
from tunray.net.address import Destination, Network, parse_host
from tunray.plugin.manager import PluginManager
from tunray.testing.conformance import check_outbound
from tunray.testing.echo import RESET_OFFSET, RESET_PREFIX
from tunray.testing.harness import driver_of, running
from tunray.testing.netns import Topology, ns_exec


async def test_conformance_loopback(loopback_echo: int) -> None:
    await check_outbound({"protocol": "freedom"}, "127.0.0.1", port=loopback_echo)


@pytest.mark.root
@pytest.mark.parametrize("family", ["v4", "v6"])
async def test_conformance_in_namespaces(topo: Topology, family: str) -> None:
    topo.start_echo()
    host = str(topo.server_v4 if family == "v4" else topo.server_v6)
    with topo.enter(topo.client):
        await check_outbound({"protocol": "freedom"}, host)


def _cfg(settings: dict[str, object], stream: dict[str, object] | None = None) -> dict[str, object]:
    ob: dict[str, object] = {"protocol": "freedom", "settings": settings}
    if stream is not None:
        ob["streamSettings"] = stream
    return {"log": {"loglevel": "none", "access": "none"}, "inbounds": [{"protocol": "driver"}], "outbounds": [ob]}


async def _echo_once(rt: object, target: str) -> tuple[bool, bytes]:
    drv = driver_of(rt)  # type: ignore[arg-type]
    app, task = drv.open_tcp("10.0.0.2:1234", target)
    if not app.accepted:
        # Wait for the dial to finish one way or the other.
        for _ in range(600):
            if app.accepted or app.reset or task.done():
                break
            await asyncio.sleep(0.01)
    if app.reset or not app.accepted:
        await task
        return False, b""
    await app.send(b"hello")
    app.shutdown_write()
    data = await app.recv_all()
    await task
    return True, data


async def test_redirect(loopback_echo: int) -> None:
    async with running(_cfg({"redirect": f"127.0.0.1:{loopback_echo}"})) as rt:
        ok, data = await _echo_once(rt, "tcp:192.0.2.1:80")
    assert ok and data == b"hello"


async def test_domain_strategies(loopback_echo: int) -> None:
    for strategy in ("AsIs", "UseIP", "UseIPv4", "ForceIPv4"):
        cfg = _cfg({"domainStrategy": strategy})
        cfg["dns"] = {"servers": ["localhost"]}
        async with running(cfg) as rt:
            ok, data = await _echo_once(rt, f"tcp:localhost:{loopback_echo}")
        assert ok and data == b"hello", strategy


def test_bad_settings_name_the_path() -> None:
    from tunray.testing import driver

    pm = PluginManager(extra=[driver])
    for settings, path in (
        ({"domainStrategy": "Sometimes"}, "outbounds[0].settings.domainStrategy"),
        ({"redirect": "nohostport"}, "outbounds[0].settings.redirect"),
        ({"fragment": {"packets": "tlshello"}}, "outbounds[0].settings.fragment"),
    ):
        with pytest.raises(ConfigError) as info:
            build_config(_cfg(settings), pm.registry)
        assert str(info.value).startswith(path), str(info.value)


@pytest.mark.root
async def test_sockopt_mark_and_interface_steer_the_socket(topo: Topology) -> None:
    """A mark sends the dial through a routing table that has no route: it must fail;
    without the mark it succeeds.  SO_BINDTODEVICE to loopback likewise cannot reach."""
    topo.start_echo()
    ns_exec(topo.client, "ip", "rule", "add", "fwmark", "77", "table", "77")
    ns_exec(topo.client, "ip", "route", "add", "unreachable", "default", "table", "77")
    target = f"tcp:{topo.server_v4}:7000"
    with topo.enter(topo.client):
        async with running(_cfg({})) as rt:
            assert (await _echo_once(rt, target)) == (True, b"hello")
        async with running(_cfg({}, {"sockopt": {"mark": 77}})) as rt:
            ok, _ = await _echo_once(rt, target)
            assert not ok
        async with running(_cfg({}, {"sockopt": {"interface": "lo"}})) as rt:
            ok, _ = await _echo_once(rt, target)
            assert not ok
        async with running(_cfg({}, {"sockopt": {"interface": topo.client_if}})) as rt:
            assert (await _echo_once(rt, target)) == (True, b"hello")


async def test_udp_domain_destination(loopback_echo: int) -> None:
    async with running(_cfg({})) as rt:
        drv = driver_of(rt)
        target = Destination(Network.UDP, "localhost", loopback_echo)
        app, task = drv.open_udp("10.0.0.2:999", target)
        app.send(b"x", target)
        reply = await asyncio.wait_for(app.recv(), 5)
        assert reply.data == b"x"
        assert reply.peer.port == loopback_echo and reply.peer.host in (parse_host("127.0.0.1"), parse_host("::1"))
        app.close()
        await task


async def test_udp_redirect_applies_to_each_packet() -> None:
    """``redirect: ":PORT"`` keeps each datagram's own host and replaces only the port."""
    loop = asyncio.get_running_loop()

    class Tagged(asyncio.DatagramProtocol):
        def __init__(self, tag: bytes) -> None:
            self.tag = tag

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
            self.transport.sendto(self.tag + data, addr)  # type: ignore[attr-defined]

    one, _ = await loop.create_datagram_endpoint(lambda: Tagged(b"1"), local_addr=("127.0.0.1", 0))
    port = one.get_extra_info("sockname")[1]
    two, _ = await loop.create_datagram_endpoint(lambda: Tagged(b"2"), local_addr=("127.0.0.2", port))
    try:
        async with running(_cfg({"redirect": f":{port}"})) as rt:
            drv = driver_of(rt)
            first = Destination(Network.UDP, parse_host("127.0.0.1"), 9)
            second = Destination(Network.UDP, parse_host("127.0.0.2"), 9)
            app, task = drv.open_udp("10.0.0.2:998", first)
            app.send(b"a", first)
            assert (await asyncio.wait_for(app.recv(), 5)).data == b"1a"
            app.send(b"b", second)
            assert (await asyncio.wait_for(app.recv(), 5)).data == b"2b"
            app.close()
            await task
    finally:
        one.close()
        two.close()


@pytest.mark.parametrize("lazy", [True, False], ids=["lazy", "eager"])
async def test_upstream_reset_reaches_the_app_as_a_reset(loopback_echo: int, lazy: bool) -> None:
    """The server sends 16 bytes then resets: the app gets exactly them, then a RST (no FIN first)."""
    cfg = _cfg({})
    cfg["inbounds"] = [{"protocol": "driver", "settings": {"lazy": lazy}}]
    async with running(cfg) as rt:
        started = time.monotonic()
        app, task = driver_of(rt).open_tcp("10.0.0.2:1234", f"tcp:127.0.0.1:{loopback_echo + RESET_OFFSET}")
        got = await asyncio.wait_for(app.recv_all(), 5)
        await asyncio.wait_for(task, 5)
        elapsed = time.monotonic() - started
    assert got == RESET_PREFIX
    assert app.reset, "the upstream reset reached the app as a clean end"
    assert not app.got_fin, "the app saw a FIN before the reset"
    assert elapsed < 1.0, f"the reset took {elapsed:.2f} s (uplinkOnly is 2 s)"


async def test_upstream_clean_end_reaches_the_app_as_a_fin(loopback_echo: int) -> None:
    """The source server sends 1 MiB then FIN: every byte, then a FIN, never a reset."""
    from tunray.testing.echo import pattern

    async with running(_cfg({})) as rt:
        app, task = driver_of(rt).open_tcp("10.0.0.2:1235", f"tcp:127.0.0.1:{loopback_echo + 1}")
        await app.send((1 << 20).to_bytes(8, "big"))
        got = await asyncio.wait_for(app.recv_all(), 5)
        assert app.got_fin and not app.reset
        app.shutdown_write()
        await asyncio.wait_for(task, 5)
    assert got == pattern(1 << 20)
    assert not app.reset
