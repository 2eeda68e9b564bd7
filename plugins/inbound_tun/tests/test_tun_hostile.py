"""Hostile input through a real TUN: nonsensical TCP flags, a device that vanishes."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import tun_helpers
from tun_helpers import (
    TunrayProcess,
    inject_tcp,
    link,
    sh,
    syn_flood,
    tcp_answer,
    topology,
    tun_config,
    tun_of,
)
from tunray.log import AccessLog
from tunray.testing.harness import running
from tunray.testing.netns import Topology

pytestmark = pytest.mark.root

TUN = "trhost0"
HOST = "203.0.113.10"
ECHO = 7000
LAN = "203.0.113.77"
SYN, FIN, ACK, PSH, URG = 0x02, 0x01, 0x10, 0x08, 0x20


def _settings(**extra: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "name": TUN,
        "gateway": ["172.19.22.1/30"],
        "autoSystemRoutingTable": ["203.0.113.0/24"],
        "autoOutboundsInterface": "veth-c",
        "handshake": "lazy",
    }
    s.update(extra)
    return s


def _world(topo: Topology) -> None:
    sh(topo.server, "ip", "addr", "add", f"{HOST}/32", "dev", "lo")
    sh(topo.client, "ip", "route", "add", "default", "via", str(topo.server_v4), "dev", topo.client_if, "metric", "100")
    topo.start_echo(port=ECHO)


@pytest.mark.parametrize("stack", ["python", "lwip", "system"])
@pytest.mark.parametrize("flags", [SYN | FIN, SYN | FIN | PSH | URG, FIN, 0])
async def test_nonsensical_flags_open_no_connection_and_no_dial(flags: int, stack: str) -> None:
    """Before: SYN+FIN opened a connection and dialled the server (every stack); FIN-only/null drew a RST."""
    with topology() as topo:
        _world(topo)
        log = io.StringIO()
        with topo.enter(topo.client):
            settings = _settings(stack=stack, mtu=1500)
            async with running(tun_config(settings), extra=[tun_helpers], access_log=AccessLog(log)) as rt:
                inject_tcp(topo, TUN, LAN, HOST, 41000, ECHO, flags).close()
                # a real SYN afterwards: its SYN-ACK (after its dial) orders it behind the first
                cap = inject_tcp(topo, TUN, LAN, HOST, 41001, ECHO, SYN)
                try:
                    assert await tcp_answer(cap, 41001) == SYN | ACK
                finally:
                    cap.close()
                stats = tun_of(rt).stats()
        text = log.getvalue()
        assert text.count("accepted") == 1, text
        assert stats.get("tcp_bad_flags") == 1, stats
        assert stats.get("tcp_connections") == 1, stats


@pytest.mark.parametrize("workers", [1, 2])
def test_a_deleted_tun_stops_its_inbound_and_the_process(tmp_path: Path, workers: int) -> None:
    """``ip link del`` under a running tunray: one log line, no traceback, exit non-zero (a supervisor restarts it).

    Before: an uncaught ``OSError: [Errno 77]`` from the reader, and a process idling forever.
    """
    cfg = tmp_path / "tun.json"
    cfg.write_text(json.dumps(tun_config(_settings(workers=workers))))
    with topology() as topo:
        _world(topo)
        tr = TunrayProcess(topo.client, str(cfg))
        try:
            tr.wait_for("started")
            sh(topo.client, "ip", "link", "del", TUN)
            rc = tr.wait(timeout=10)
        finally:
            tr.close()
        assert rc == 1, tr.text
        assert link(topo.client, TUN) is None
        vanished = [ln for ln in tr.lines if "the device vanished or failed" in ln]
        assert 1 <= len(vanished) <= workers, tr.text  # logged once (at most once per worker, none restarted)
        assert "no inbound left" in tr.text, tr.text
        assert not any("Traceback" in ln or "Exception in callback" in ln for ln in tr.lines), tr.text


def sh_out(ns: str, *cmd: str) -> str:
    from tunray.testing.netns import ns_exec

    return ns_exec(ns, *cmd).stdout


def _flood(topo: Topology, count: int, port: int) -> None:
    syn_flood(topo, TUN, HOST, count, port)


@pytest.mark.timeout(60)
async def test_a_spoofed_syn_flood_does_not_lock_out_a_real_app() -> None:
    """Before: each spoofed SYN took a flow slot and a dial, so the real app was refused."""
    import asyncio

    import tun_app

    with topology() as topo:
        _world(topo)
        log = io.StringIO()
        settings = _settings(maxFlows=256, maxHalfOpen=32, maxHalfOpenPerSource=4)
        with topo.enter(topo.client):
            async with running(tun_config(settings), extra=[tun_helpers], access_log=AccessLog(log)) as rt:
                await asyncio.to_thread(_flood, topo, 3000, ECHO)
                await asyncio.sleep(0.3)  # let the stack read the whole flood first

                def app() -> int:
                    with topo.enter(topo.client):
                        return sum(tun_app.tcp_echo(HOST, ECHO, 4096) for _ in range(5))

                assert await asyncio.to_thread(app) == 5 * 4096
                stats = tun_of(rt).stats()
                # SYNs the kernel dropped because its TUN queue was full never reached the stack
                shown = json.loads(sh_out(topo.client, "ip", "-s", "-j", "link", "show", "dev", TUN))
                dropped = int(shown[0]["stats64"]["tx"]["dropped"])
        dials = log.getvalue().count("accepted")
        assert dials <= 32 + 5, f"{dials} upstream dials for a budget of 32"
        assert stats["tcp_connections"] <= 32 + 5, stats  # state (and a dial) for the budget only
        # every flood SYN that reached the stack beyond the budget got a cookie, not state
        assert stats["tcp_syn_cookies_sent"] >= 3000 - dropped - 32, (dropped, stats)
        assert stats.get("tcp_syn_cookies_accepted", 0) + stats["tcp_connections"] >= 5, stats


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stack", ["lwip", "system"])
async def test_a_spoofed_syn_flood_is_bounded_by_the_half_open_budget_without_cookies(stack: str) -> None:
    """lwip and system cannot answer with SYN cookies: the budget holds, the oldest handshakes are
    evicted (RST, and their dials stopped), and a real app still gets through.  Before: both refused
    ``maxHalfOpen`` and kept a flow (and a dial) per spoofed SYN."""
    import asyncio

    import tun_app

    with topology() as topo:
        _world(topo)
        log = io.StringIO()
        settings = _settings(stack=stack, mtu=1500, maxFlows=4096, maxHalfOpen=32, maxHalfOpenPerSource=4)
        with topo.enter(topo.client):
            async with running(tun_config(settings), extra=[tun_helpers], access_log=AccessLog(log)) as rt:
                st = tun_of(rt).stack
                assert st is not None
                peak = [0]

                async def watch() -> None:
                    while True:
                        peak[0] = max(peak[0], st.stats()["tcp_half_open"])
                        await asyncio.sleep(0.01)

                watcher = asyncio.get_running_loop().create_task(watch())
                try:
                    await asyncio.to_thread(_flood, topo, 3000, ECHO)
                    await asyncio.sleep(0.3)

                    def app() -> int:
                        with topo.enter(topo.client):
                            return sum(tun_app.tcp_echo(HOST, ECHO, 4096) for _ in range(5))

                    assert await asyncio.to_thread(app) == 5 * 4096
                finally:
                    watcher.cancel()
                stats = tun_of(rt).stats()
                shown = json.loads(sh_out(topo.client, "ip", "-s", "-j", "link", "show", "dev", TUN))
                dropped = int(shown[0]["stats64"]["tx"]["dropped"])
        assert peak[0] <= 32 and stats["tcp_half_open"] <= 32, (peak, stats)
        reached = stats["tcp_connections"]
        assert reached >= 3000 - dropped - 1, (dropped, stats)  # every SYN that reached the stack got a slot ...
        assert stats["tcp_half_open_evicted"] >= reached - 32 - 5, stats  # ... and all but the budget were evicted
        assert stats.get("tcp_syn_cookies_sent", 0) == 0


@pytest.mark.timeout(60)
def test_limits_are_logged_once_and_reported_by_sigusr1(tmp_path: Path) -> None:
    import signal

    cfg = tmp_path / "tun.json"
    # one worker: each worker process has its own stack and logs its own limit line once
    cfg.write_text(json.dumps(tun_config(_settings(maxHalfOpen=8, maxHalfOpenPerSource=2, workers=1))))
    with topology() as topo:
        _world(topo)
        tr = TunrayProcess(topo.client, str(cfg))
        try:
            tr.wait_for("started")
            _flood(topo, 200, ECHO)
            tr.wait_for("limit reached: maxHalfOpen")
            mark = len(tr.lines)
            tr.proc.send_signal(signal.SIGUSR1)
            line = tr.wait_for("stats {", start=mark)
            snap = json.loads(line[line.index("stats {") + 6 :])
            stack = snap["inbounds"]["tun-in"]
            assert stack["tcp_syn_cookies_sent"] > 0 and stack["tcp_open"] <= 8, stack
            assert snap["reloads"] == 0 and snap["failed_inbounds"] == []
            assert sum("limit reached: maxHalfOpen" in ln for ln in tr.lines) == 1, tr.text  # once
            tr.proc.send_signal(signal.SIGTERM)
            assert tr.wait() == 0, tr.text
        finally:
            tr.close()
