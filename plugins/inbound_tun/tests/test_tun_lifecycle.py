"""Device lifecycle: link, MTU, addresses, routes appear on start and vanish on stop.

Everything runs in a namespace made by the test (``Topology``); the runtime runs
in-process with the calling thread inside the client namespace.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import tun_helpers
from tun_helpers import RecordingStack, addresses, link, links, routes, topology, tun_config, tun_of
from tunray.net.tun import TunError, open_tun
from tunray.testing.harness import running
from tunray.testing.netns import ns_exec

pytestmark = pytest.mark.root

IFF_UP = 0x1


def _stack(rt: Any) -> RecordingStack:
    stack = tun_of(rt).stack
    assert isinstance(stack, RecordingStack)
    return stack


def _poke(dst: str, port: int = 9999) -> None:
    """Send one UDP datagram from the current namespace (the kernel routes it)."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.sendto(b"tunray-probe", (dst, port))


async def test_link_addresses_routes_created_and_removed() -> None:
    settings = {
        "name": "trtun0",
        "mtu": 1400,
        "gateway": ["172.19.0.1/30", "fd00:19::1/126"],
        "autoSystemRoutingTable": ["203.0.113.0/24", "2001:db8:1::/48"],
        "autoOutboundsInterface": "",
        "stack": "recording",
    }
    with topology() as topo:
        ns = topo.client
        with topo.enter(ns):
            async with running(tun_config(settings), extra=[tun_helpers]) as rt:
                info = link(ns, "trtun0")
                assert info is not None, "TUN link missing"
                assert info["mtu"] == 1400
                assert "UP" in info["flags"]
                assert sorted(addresses(ns, "trtun0")) == ["172.19.0.1/30", "fd00:19::1/126"]
                v4 = [r for r in routes(ns) if r.get("dev") == "trtun0" and r["dst"] == "203.0.113.0/24"]
                assert (
                    v4
                    and v4[0].get("metric") == 1
                    and v4[0].get("scope") == "link"
                    and "gateway" not in v4[0]
                )
                v6 = [
                    r
                    for r in routes(ns, v6=True)
                    if r.get("dev") == "trtun0" and r["dst"] == "2001:db8:1::/48"
                ]
                assert v6 and v6[0].get("metric") == 1
                # The kernel routes into the TUN and the stack reads the packets.
                _poke("203.0.113.5")
                _poke("2001:db8:1::5")
                stack = _stack(rt)
                async with asyncio.timeout(5):
                    pkt4 = await stack.wait_for("203.0.113.5")
                    pkt6 = await stack.wait_for("2001:db8:1::5")
                assert pkt4[12:16] == socket.inet_aton("172.19.0.1"), "source should be the TUN address"
                assert pkt4[9] == socket.IPPROTO_UDP and pkt6[6] == socket.IPPROTO_UDP
                assert stack.options.mtu == 1400 and stack.options.handshake == "lazy"
                device = tun_of(rt).device
                assert device is not None and device.offloads.vnet_hdr, "offload is on by default"
            assert link(ns, "trtun0") is None, "TUN link left after stop"
            assert not [r for r in routes(ns) if r.get("dev") == "trtun0"]
            assert not [r for r in routes(ns, v6=True) if r.get("dev") == "trtun0"]


async def test_a_stack_without_lazy_or_vnet_runs_eager_on_a_plain_tun() -> None:
    """Left out, ``handshake``/``offload`` become what the stack declares (the refusal is in test_tun_config)."""
    with topology() as topo, topo.enter(topo.client):
        async with running(tun_config({"stack": "eager-only"}), extra=[tun_helpers]) as rt:
            stack = tun_of(rt).stack
            assert isinstance(stack, tun_helpers.EagerOnlyStack)
            device = tun_of(rt).device
            assert stack.options.handshake == "eager"
            assert device is not None and not device.offloads.vnet_hdr


async def test_default_name_is_a_free_tun_name_and_stop_is_idempotent() -> None:
    with topology() as topo:
        ns = topo.client
        with topo.enter(ns):
            before = set(links(ns))
            async with running(
                tun_config({"stack": "recording", "offload": False}), extra=[tun_helpers]
            ) as rt:
                inbound = tun_of(rt)
                new = set(links(ns)) - before
                assert new == {inbound.ifname}
                assert inbound.ifname.startswith("tun") and inbound.ifname[3:].isdigit()
                assert inbound.device is not None and not inbound.device.offloads.vnet_hdr
                await inbound.stop()
                assert set(links(ns)) == before
                await inbound.stop()  # again: nothing happens
            assert set(links(ns)) == before


async def test_persistent_tun_is_kept_but_cleaned() -> None:
    """A TUN that existed before start is not deleted, only our addresses and routes go."""
    with topology() as topo:
        ns = topo.client
        ns_exec(ns, "ip", "tuntap", "add", "dev", "trp0", "mode", "tun")
        with topo.enter(ns):
            cfg = tun_config(
                {
                    "name": "trp0",
                    "gateway": ["172.19.4.1/30"],
                    "autoSystemRoutingTable": ["198.51.100.0/24"],
                    "autoOutboundsInterface": "",
                    "stack": "recording",
                    "offload": False,
                }
            )
            async with running(cfg, extra=[tun_helpers]):
                assert addresses(ns, "trp0") == ["172.19.4.1/30"]
                assert any(r["dst"] == "198.51.100.0/24" for r in routes(ns, "dev", "trp0"))
            info = link(ns, "trp0")
            assert info is not None, "a pre-existing persistent TUN must survive"
            assert "UP" not in info["flags"]
            assert addresses(ns, "trp0") == []
            assert routes(ns, "dev", "trp0") == []


async def test_failed_start_cleans_up() -> None:
    """A route the kernel refuses makes start fail; nothing it did is left behind."""
    with topology() as topo:
        ns = topo.client
        with topo.enter(ns):
            before = set(links(ns))
            cfg = tun_config(
                {
                    "name": "trbad0",
                    "gateway": ["172.19.8.1/30"],
                    # IPv6 disabled on the link => the v6 route cannot be added
                    "autoSystemRoutingTable": ["198.51.100.0/24", "2001:db8:9::/48"],
                    "autoOutboundsInterface": "",
                    "stack": "recording",
                }
            )
            ns_exec(ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
            with pytest.raises(OSError, match="2001:db8:9::/48"):
                async with running(cfg, extra=[tun_helpers]):
                    pass
            assert set(links(ns)) == before
            assert not [r for r in routes(ns) if r["dst"] == "198.51.100.0/24"]


async def test_adopted_fd_is_used_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    with topology() as topo:
        ns = topo.client
        with topo.enter(ns):
            device, name = open_tun("tradopt0")
            try:
                ns_exec(ns, "ip", "addr", "add", "172.19.12.1/30", "dev", name)
                ns_exec(ns, "ip", "link", "set", name, "up")
                ns_exec(ns, "ip", "route", "add", "192.0.2.0/24", "dev", name)
                monkeypatch.setenv("XRAY_TUN_FD", str(device.fileno()))
                cfg = tun_config(
                    {
                        "name": name,
                        "mtu": 1280,
                        "gateway": ["172.19.99.1/30"],
                        "autoSystemRoutingTable": ["198.51.100.0/24"],
                        "autoOutboundsInterface": "",
                        "stack": "recording",
                    }
                )
                async with running(cfg, extra=[tun_helpers]) as rt:
                    assert tun_of(rt).adopted
                    # Not touched: no gateway address, no route, MTU unchanged.
                    assert addresses(ns, name) == ["172.19.12.1/30"]
                    assert not [r for r in routes(ns) if r["dst"] == "198.51.100.0/24"]
                    assert link(ns, name)["mtu"] == 1500  # type: ignore[index]
                    _poke("192.0.2.9")
                    async with asyncio.timeout(5):
                        await _stack(rt).wait_for("192.0.2.9")
                # Still ours after stop: the fd is open and the link is up with its address.
                os.fstat(device.fileno())
                info = link(ns, name)
                assert info is not None and "UP" in info["flags"]
                assert addresses(ns, name) == ["172.19.12.1/30"]
            finally:
                device.close()
            assert link(ns, name) is None


async def test_adopted_fd_must_match_name_and_be_a_tun(monkeypatch: pytest.MonkeyPatch) -> None:
    with topology() as topo:
        with topo.enter(topo.client):
            device, _ = open_tun("tradopt1")
            try:
                monkeypatch.setenv("XRAY_TUN_FD", str(device.fileno()))
                cfg = tun_config({"name": "other0", "stack": "recording"})
                with pytest.raises(TunError, match="other0"):
                    async with running(cfg, extra=[tun_helpers]):
                        pass
            finally:
                device.close()
            r, w = os.pipe()
            try:
                monkeypatch.setenv("XRAY_TUN_FD", str(r))
                with pytest.raises(TunError, match="not a TUN"):
                    async with running(tun_config({"stack": "recording"}), extra=[tun_helpers]):
                        pass
            finally:
                os.close(r)
                os.close(w)


def _wait_until(pred: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.timeout(60)
def test_tunray_run_subprocess_cleans_up_on_sigterm(tmp_path: Path) -> None:
    settings = {
        "name": "trrun0",
        "mtu": 9000,
        "gateway": ["172.19.16.1/30"],
        "autoSystemRoutingTable": ["198.51.100.0/24"],
    }
    cfg = tmp_path / "tun.json"
    cfg.write_text(json.dumps(tun_config(settings)))
    tunray = str(Path(sys.executable).with_name("tunray"))
    with topology() as topo:
        ns = topo.client
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, tunray, "run", "-c", str(cfg)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _wait_until(
                lambda: (
                    proc.poll() is not None
                    or any(r["dst"] == "198.51.100.0/24" for r in routes(ns, "dev", "trrun0"))
                    if link(ns, "trrun0")
                    else proc.poll() is not None
                ),
                15,
                "the TUN and its route",
            )
            assert proc.poll() is None, proc.communicate()[1]
            info = link(ns, "trrun0")
            assert info is not None and info["mtu"] == 9000 and "UP" in info["flags"]
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=15)
            assert proc.returncode == 0, err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert link(ns, "trrun0") is None, "tunray left its TUN behind after SIGTERM"
        assert "trrun0" not in links(ns)
        assert not [r for r in routes(ns) if r["dst"] == "198.51.100.0/24"]


@pytest.mark.timeout(60)
def test_sigterm_drains_a_running_flow_then_cleans_up(tmp_path: Path) -> None:
    """SIGTERM mid-flow: the flow keeps working and ends cleanly within the drain, then the
    process exits 0 and its TUN and routes are gone, all within 5 s of the signal."""
    import hashlib

    settings = {
        "name": "trdrain0",
        "gateway": ["172.19.17.1/30"],
        "autoSystemRoutingTable": ["203.0.113.0/24"],
        "autoOutboundsInterface": "veth-c",
    }
    cfg = tmp_path / "tun.json"
    cfg.write_text(json.dumps(tun_config(settings)))
    tunray = str(Path(sys.executable).with_name("tunray"))
    with topology() as topo:
        ns = topo.client
        ns_exec(topo.server, "ip", "addr", "add", "203.0.113.10/32", "dev", "lo")
        ns_exec(ns, "ip", "route", "add", "default", "via", str(topo.server_v4), "dev", topo.client_if, "metric", "100")
        topo.start_echo(port=7000)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, tunray, "run", "-c", str(cfg), "-drain", "4"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _wait_until(
                lambda: proc.poll() is not None or any(r["dst"] == "203.0.113.0/24" for r in routes(ns, "dev", "trdrain0"))
                if link(ns, "trdrain0") else proc.poll() is not None,
                15,
                "the TUN and its route",
            )
            assert proc.poll() is None, proc.communicate()[1]
            first, second = os.urandom(1 << 20), os.urandom(1 << 20)
            with topo.enter(ns):
                app = socket.create_connection(("203.0.113.10", 7000), timeout=10)
            with app:
                app.sendall(first)
                got = bytearray()
                while len(got) < len(first):
                    got += app.recv(1 << 16)
                signalled = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                time.sleep(0.5)  # well inside the drain: the flow must still carry data
                assert proc.poll() is None
                with topo.enter(ns), pytest.raises(ConnectionRefusedError):  # new flows get a RST
                    socket.create_connection(("203.0.113.10", 7000), timeout=3).close()
                app.sendall(second)
                app.shutdown(socket.SHUT_WR)
                while chunk := app.recv(1 << 16):  # ends with a clean FIN (a reset would raise)
                    got += chunk
            assert hashlib.sha256(got).digest() == hashlib.sha256(first + second).digest()
            _, err = proc.communicate(timeout=10)
            elapsed = time.monotonic() - signalled
            assert proc.returncode == 0, err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert link(ns, "trdrain0") is None, "tunray left its TUN behind after SIGTERM"
        assert not [r for r in routes(ns) if r["dst"] == "203.0.113.0/24"]
        assert elapsed < 5.0, f"shutdown took {elapsed:.1f} s"


async def test_limit_settings_reach_the_stack() -> None:
    """maxFlows, maxHalfOpen, maxHalfOpenPerSource and udpQueuePackets are named settings that take effect."""
    settings = {"stack": "python", "maxFlows": 77, "maxHalfOpen": 11, "maxHalfOpenPerSource": 3, "udpQueuePackets": 9}
    with topology() as topo, topo.enter(topo.client):
        async with running(tun_config(settings), extra=[tun_helpers]) as rt:
            stack = tun_of(rt).stack
            assert stack is not None
            o = stack.options
            assert (o.max_flows, o.max_half_open, o.max_half_open_per_source, o.udp_queue_packets) == (77, 11, 3, 9)
