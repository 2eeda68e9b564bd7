"""``tunray stats``: a real ``tunray run`` on a real TUN serves its counters on its control socket."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tun_helpers import TunrayProcess, sh, syn_flood, topology, tun_config
from tunray.stackdriver import LIMITS

pytestmark = pytest.mark.root

TUN = "trstats0"
HOST = "203.0.113.10"
ECHO = 7000
GAUGES = ("tcp_open", "tcp_half_open", "udp_open", "buffered_bytes", "buffered_bytes_limit", "flows_open")


def _stats(sock: Path) -> dict[str, Any]:
    tunray = str(Path(sys.executable).with_name("tunray"))
    res = subprocess.run([tunray, "stats", "-socket", str(sock)], capture_output=True, text=True, timeout=20,
                         check=False)
    assert res.returncode == 0, res.stderr
    result: dict[str, Any] = json.loads(res.stdout)
    return result


def _until(sock: Path, ok: Any, timeout: float = 10.0) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while True:
        snap = _stats(sock)
        if ok(snap) or time.monotonic() > end:
            return snap
        time.sleep(0.2)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("workers", [1, 2])
def test_stats_prints_every_limit_counter_and_gauge(tmp_path: Path, workers: int) -> None:
    settings = {"name": TUN, "gateway": ["172.19.24.1/30"], "autoSystemRoutingTable": ["203.0.113.0/24"],
                "autoOutboundsInterface": "veth-c", "workers": workers, "maxHalfOpen": 8,
                "maxHalfOpenPerSource": 2, "maxBufferedBytes": 8 << 20}
    cfg = tmp_path / "tun.json"
    cfg.write_text(json.dumps(tun_config(settings)))
    sock = tmp_path / "ctl" / "tunray.sock"
    with topology() as topo:
        sh(topo.server, "ip", "addr", "add", f"{HOST}/32", "dev", "lo")
        sh(topo.client, "ip", "route", "add", "default", "via", str(topo.server_v4), "dev", topo.client_if)
        topo.start_echo(port=ECHO)
        tr = TunrayProcess(topo.client, str(cfg), "-control", str(sock))
        try:
            tr.wait_for("started")
            if workers > 1:
                for k in range(1, workers):  # the siblings' sockets, which worker 0 asks
                    _until(sock, lambda s, k=k: any(w.get("worker") == k and "error" not in w
                                                     for w in s.get("workers", [])))
            st = os.stat(sock)
            assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
            syn_flood(topo, TUN, HOST, 300, ECHO)  # spoofed SYNs beyond maxHalfOpen: cookies
            snap = _until(sock, lambda s: s["inbounds"]["tun-in"]["tcp_syn_cookies_sent"] > 0)
            tun = snap["inbounds"]["tun-in"]
            for name in (*LIMITS, *GAUGES):
                assert name in tun, (name, tun)
            assert tun["tcp_syn_cookies_sent"] > 0 and tun["tcp_half_open"] <= 8 * workers, tun
            assert tun["buffered_bytes_limit"] == 8 << 20, tun  # the workers' shares add up to the setting
            assert tun["limits"]["maxBufferedBytes"] == 8 << 20, tun
            if workers == 1:
                assert snap["pid"] == tr.proc.pid  # ip netns exec execs tunray
                assert "workers" not in snap
            else:
                per = snap["workers"]
                assert [w["worker"] for w in per] == list(range(workers)), per
                assert len({w["pid"] for w in per}) == workers, per
                for key in ("tcp_syn_cookies_sent", "tcp_connections", "buffered_bytes_limit"):
                    assert tun.get(key, 0) == sum(w["inbounds"]["tun-in"].get(key, 0) for w in per), key
                # steering spreads the spoofed sources over both workers
                assert all(w["inbounds"]["tun-in"]["tcp_syn_cookies_sent"] > 0 for w in per), per
            tr.proc.send_signal(signal.SIGTERM)
            assert tr.wait() == 0, tr.text
        finally:
            tr.close()
        assert not sock.exists(), "the control socket is removed at exit"
        assert not any(Path(f"{sock}.{k}").exists() for k in range(1, workers))


def test_stats_without_a_running_tunray_is_one_line(tmp_path: Path) -> None:
    tunray = str(Path(sys.executable).with_name("tunray"))
    res = subprocess.run([tunray, "stats", "-socket", str(tmp_path / "none.sock")], capture_output=True, text=True,
                         timeout=20, check=False)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "cannot reach" in res.stderr and "none.sock" in res.stderr, res.stderr
