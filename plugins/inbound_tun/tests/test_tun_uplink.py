"""``autoOutboundsInterface``: uplink detection, re-detection and socket binding."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

import pytest
import tun_helpers
from tun_helpers import sh, topology, tun_config
from tunray.net.sockopt import SO_BINDTODEVICE
from tunray.testing.harness import running
from tunray_tun.netconf import NetlinkWorker
from tunray_tun.uplink import detect_uplink

pytestmark = pytest.mark.root


def bound_device(sock: socket.socket) -> str:
    return sock.getsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, 16).rstrip(b"\0").decode()


def _dummy(ns: str, name: str, v4: str | None, metric: int | None, *, v6: str | None = None) -> None:
    """A fake uplink with an address and (optionally) a default route of *metric*."""
    # no "dummy" module here: a veth pair with both ends in the namespace does as well
    sh(ns, "ip", "link", "add", name, "type", "veth", "peer", "name", name + "p")
    sh(ns, "ip", "link", "set", name + "p", "up")
    sh(ns, "ip", "link", "set", name, "up")
    if v4 is not None:
        sh(ns, "ip", "addr", "add", v4, "dev", name)
        if metric is not None:
            sh(ns, "ip", "route", "add", "default", "dev", name, "metric", str(metric))
    if v6 is not None:
        sh(ns, "ip", "addr", "add", v6, "dev", name, "nodad")
        sh(ns, "ip", "-6", "route", "add", "default", "dev", name, "metric", str(metric or 1024))


async def _until(pred: Any, what: str, within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not pred():  # noqa: ASYNC110 - polling an attribute set by a netlink callback
            await asyncio.sleep(0.02)
    assert pred(), what


async def test_detect_lowest_metric_skipping_tun_down_and_loopback() -> None:
    with topology() as topo:
        ns = topo.client
        _dummy(ns, "up0", "192.0.2.1/24", 100)
        _dummy(ns, "up1", "198.51.100.1/24", 50)
        _dummy(ns, "updown", "203.0.113.1/24", 5)
        sh(ns, "ip", "link", "set", "updown", "down")  # the best metric, but down
        sh(ns, "ip", "route", "add", "default", "dev", "lo", "metric", "2")
        with topo.enter(ns):
            worker = NetlinkWorker()
            try:
                tun_index = int(tun_helpers.ip_json(ns, "link", "show", "dev", "up1")[0]["ifindex"])
                assert await worker.call(detect_uplink, None) == "up1"
                # Pretend up1 is the TUN: it is skipped, the next best is up0.
                assert await worker.call(detect_uplink, tun_index) == "up0"
            finally:
                await worker.aclose()


async def test_detect_falls_back_to_ipv6_and_to_nothing() -> None:
    with topology() as topo:
        ns = topo.client
        with topo.enter(ns):
            worker = NetlinkWorker()
            try:
                assert await worker.call(detect_uplink, None) is None
                _dummy(ns, "up6", None, 10, v6="2001:db8:6::1/64")
                assert await worker.call(detect_uplink, None) == "up6"
                _dummy(ns, "up4", "192.0.2.1/24", 500)
                assert await worker.call(detect_uplink, None) == "up4", "IPv4 is looked at first"
            finally:
                await worker.aclose()


async def test_auto_binds_outbound_sockets_and_follows_route_changes() -> None:
    settings = {
        "name": "trtun1",
        "gateway": ["172.19.20.1/30"],
        # metric 1 default into the TUN: detection must not pick the TUN itself
        "autoSystemRoutingTable": ["0.0.0.0/0"],
        "stack": "recording",
    }
    with topology() as topo:
        ns = topo.client
        _dummy(ns, "up0", "192.0.2.1/24", 100)
        _dummy(ns, "up1", "198.51.100.1/24", 50)
        with topo.enter(ns):
            async with running(tun_config(settings), extra=[tun_helpers]) as rt:
                inbound = tun_helpers.tun_of(rt)
                assert inbound.uplink_mode == "auto", "routes without autoOutboundsInterface mean auto"
                dialer = rt.dialer
                assert len(dialer.controllers) == 1
                with dialer.udp_socket(socket.AF_INET, peer=ipaddress.ip_address("203.0.113.1")) as s:
                    assert bound_device(s) == "up1"
                with dialer.udp_socket(socket.AF_INET, peer=ipaddress.ip_address("127.0.0.1")) as s:
                    assert bound_device(s) == "", "loopback destinations stay unbound"
                with dialer.udp_socket(socket.AF_INET6, peer=ipaddress.ip_address("::1")) as s:
                    assert bound_device(s) == ""
                # A TCP dial goes through the same controller: a listener on loopback is reachable...
                server = socket.create_server(("127.0.0.1", 0))
                try:
                    from tunray.net.address import Destination, Network

                    port = server.getsockname()[1]
                    sock = await dialer.connect_tcp(
                        Destination(Network.TCP, ipaddress.ip_address("127.0.0.1"), port)
                    )
                    assert bound_device(sock) == ""
                    sock.close()
                finally:
                    server.close()
                # The uplink goes down: re-detected from netlink events, without polling.
                sh(ns, "ip", "link", "set", "up1", "down")
                await _until(lambda: inbound.uplink == "up0", "switch to up0")
                with dialer.udp_socket(socket.AF_INET, peer=ipaddress.ip_address("203.0.113.1")) as s:
                    assert bound_device(s) == "up0"
                # A better route appears.
                sh(ns, "ip", "link", "set", "up1", "up")
                sh(ns, "ip", "route", "add", "default", "dev", "up1", "metric", "10")
                await _until(lambda: inbound.uplink == "up1", "switch back to up1")
            assert rt.dialer.controllers == [], "the controller is removed on stop"


async def test_fixed_interface_and_off() -> None:
    with topology() as topo:
        ns = topo.client
        _dummy(ns, "up0", "192.0.2.1/24", 100)
        _dummy(ns, "up1", "198.51.100.1/24", 50)
        with topo.enter(ns):
            cfg = tun_config({"autoOutboundsInterface": "up0", "stack": "recording"})
            async with running(cfg, extra=[tun_helpers]) as rt:
                with rt.dialer.udp_socket(socket.AF_INET, peer=ipaddress.ip_address("203.0.113.1")) as s:
                    assert bound_device(s) == "up0"
            cfg = tun_config(
                {
                    "autoSystemRoutingTable": ["198.18.0.0/15"],
                    "autoOutboundsInterface": "",
                    "stack": "recording",
                }
            )
            async with running(cfg, extra=[tun_helpers]) as rt:
                assert rt.dialer.controllers == []
                with rt.dialer.udp_socket(socket.AF_INET, peer=ipaddress.ip_address("203.0.113.1")) as s:
                    assert bound_device(s) == ""


async def test_sockopt_interface_overrides_the_controller() -> None:
    with topology() as topo:
        ns = topo.client
        _dummy(ns, "up0", "192.0.2.1/24", 100)
        _dummy(ns, "up1", "198.51.100.1/24", 50)
        with topo.enter(ns):
            cfg = tun_config({"autoOutboundsInterface": "auto", "stack": "recording"})
            async with running(cfg, extra=[tun_helpers]) as rt:
                from tunray.net.sockopt import SOCKOPT_SCHEMA

                opts = SOCKOPT_SCHEMA.parse({"interface": "up0"}, "sockopt")
                with rt.dialer.udp_socket(
                    socket.AF_INET, peer=ipaddress.ip_address("203.0.113.1"), opts=opts
                ) as s:
                    assert bound_device(s) == "up0"
                with rt.dialer.udp_socket(socket.AF_INET, peer=ipaddress.ip_address("203.0.113.1")) as s:
                    assert bound_device(s) == "up1"
