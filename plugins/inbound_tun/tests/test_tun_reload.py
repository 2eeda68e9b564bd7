"""SIGHUP reloads a running ``tunray run`` (a real process with a real TUN), as sing-box does.

Before: SIGHUP killed the process (rc 129) and left a persistent TUN behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
from tun_helpers import TunrayProcess, link, topology, tun_config
from tunray.testing.netns import Topology, ns_exec

pytestmark = pytest.mark.root

TUN = "trhup0"
HOST = "203.0.113.10"
ECHO = 7000


def _config(*outbounds: dict[str, Any], **top: Any) -> dict[str, Any]:
    settings = {
        "name": TUN,
        "gateway": ["172.19.18.1/30"],
        "autoSystemRoutingTable": ["203.0.113.0/24"],
        "autoOutboundsInterface": "veth-c",
    }
    return tun_config(settings, *outbounds, **top)


def _echo(conn: socket.socket, size: int = 4096) -> None:
    data = os.urandom(size)
    conn.sendall(data)
    got = bytearray()
    while len(got) < size:
        chunk = conn.recv(65536)
        assert chunk, "the running flow ended"
        got += chunk
    assert bytes(got) == data


def _connect(topo: Topology) -> socket.socket:
    with topo.enter(topo.client):
        return socket.create_connection((HOST, ECHO), timeout=5)


def _new_flow_outcome(topo: Topology) -> str:
    """'echo' if a fresh connection carries data, 'refused' if its SYN is answered by a reset."""
    try:
        with _connect(topo) as conn:
            _echo(conn, 100)
    except ConnectionRefusedError:
        return "refused"
    return "echo"


@pytest.mark.timeout(60)
def test_sighup_reloads_new_flows_and_keeps_running_ones(tmp_path: Path) -> None:
    cfg = tmp_path / "tun.json"
    cfg.write_text(json.dumps(_config({"protocol": "freedom", "tag": "direct"})))
    with topology() as topo:
        ns = topo.client
        ns_exec(topo.server, "ip", "addr", "add", f"{HOST}/32", "dev", "lo")
        ns_exec(ns, "ip", "route", "add", "default", "via", str(topo.server_v4), "dev", topo.client_if, "metric", "100")
        topo.start_echo(port=ECHO)
        tr = TunrayProcess(ns, str(cfg))
        try:
            tr.wait_for("started")
            index = link(ns, TUN)["ifindex"]  # type: ignore[index]
            running = _connect(topo)
            with running:
                _echo(running)
                # 1. valid new config: everything to blackhole
                cfg.write_text(json.dumps(_config({"protocol": "blackhole", "tag": "block"})))
                mark = len(tr.lines)
                tr.proc.send_signal(signal.SIGHUP)
                tr.wait_for("configuration reloaded", start=mark)
                assert tr.proc.poll() is None
                _echo(running)  # the running flow finishes on the old outbound
                assert _new_flow_outcome(topo) == "refused"  # new flows use the new routing
                # 2. an invalid config: one line, nothing changes
                cfg.write_text(json.dumps(_config({"protocol": "freedom", "tag": "direct", "settings": {"redirect": "x"}})))
                mark = len(tr.lines)
                tr.proc.send_signal(signal.SIGHUP)
                line = tr.wait_for("reload failed", start=mark)
                assert "outbounds[0].settings.redirect" in line, line
                assert not any("Traceback" in ln for ln in tr.lines[mark:]), tr.text
                assert _new_flow_outcome(topo) == "refused"  # still the last good config
                _echo(running)
                # 3. back to freedom
                cfg.write_text(json.dumps(_config({"protocol": "freedom", "tag": "direct"})))
                mark = len(tr.lines)
                tr.proc.send_signal(signal.SIGHUP)
                tr.wait_for("configuration reloaded", start=mark)
                assert _new_flow_outcome(topo) == "echo"
                _echo(running)
            # the TUN was never rebuilt
            assert link(ns, TUN)["ifindex"] == index  # type: ignore[index]
            tr.proc.send_signal(signal.SIGTERM)
            assert tr.wait() == 0, tr.text
        finally:
            tr.close()
        assert link(ns, TUN) is None


@pytest.mark.timeout(60)
def test_sighup_with_changed_inbounds_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "tun.json"
    cfg.write_text(json.dumps(_config({"protocol": "freedom", "tag": "direct"})))
    with topology() as topo:
        tr = TunrayProcess(topo.client, str(cfg))
        try:
            tr.wait_for("started")
            changed = _config({"protocol": "freedom", "tag": "direct"})
            changed["inbounds"][0]["settings"]["mtu"] = 9000
            cfg.write_text(json.dumps(changed))
            mark = len(tr.lines)
            tr.proc.send_signal(signal.SIGHUP)
            line = tr.wait_for("reload failed", start=mark)
            assert "inbounds[0]" in line and "restart" in line, line
            assert link(topo.client, TUN)["mtu"] == 1500  # type: ignore[index]
            tr.proc.send_signal(signal.SIGTERM)
            assert tr.wait() == 0, tr.text
        finally:
            tr.close()
