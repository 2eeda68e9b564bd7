"""Privileges of a real ``tunray run`` with a TUN: dropped after set-up, traffic still flows.

Also the supervisor recipe of docs/running-unprivileged.md: a pre-created persistent TUN
handed over by fd (``XRAY_TUN_FD``) to a tunray that never was root.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from tun_helpers import TunrayProcess, as_unprivileged_python, link, sh, topology, tun_config
from tunray.net.tun import IFF_NO_PI, IFF_TUN, TUNSETIFF
from tunray.testing.netns import Topology, ns_exec

pytestmark = pytest.mark.root

HOST = "203.0.113.10"
PROXY = "198.51.100.1"
ECHO = 7000
NOBODY = 65534
CAP_NET_ADMIN = 1 << 12


def _status(pid: int, task: str | None = None) -> dict[str, str]:
    path = f"/proc/{pid}/status" if task is None else f"/proc/{pid}/task/{task}/status"
    out: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def _world(topo: Topology) -> None:
    for addr in (f"{HOST}/32", f"{PROXY}/32"):
        ns_exec(topo.server, "ip", "addr", "add", addr, "dev", "lo")
    sh(topo.client, "ip", "route", "add", "default", "via", str(topo.server_v4), "dev", topo.client_if, "metric", "100")
    topo.start_echo(port=ECHO)


def _echo_through(topo: Topology, size: int = 64 * 1024) -> None:
    data = os.urandom(size)
    with topo.enter(topo.client):
        conn = socket.create_connection((HOST, ECHO), timeout=10)
    with conn:
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        got = bytearray()
        while chunk := conn.recv(65536):
            got += chunk
    assert bytes(got) == data


def _carry_then_stop(topo: Topology, tr: TunrayProcess) -> None:
    """An echo through the TUN, then SIGTERM: tunray must exit 0."""
    try:
        _echo_through(topo)
    except OSError as exc:
        raise AssertionError(tr.text) from exc
    tr.proc.send_signal(signal.SIGTERM)
    assert tr.wait() == 0, tr.text


def _tids(pid: int) -> list[str]:
    return os.listdir(f"/proc/{pid}/task")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["config", "flag"])
def test_tunray_drops_to_nobody_keeping_net_admin(tmp_path: Path, how: str) -> None:
    settings = {
        "name": "trpriv0",
        "gateway": ["172.19.20.1/30"],
        "autoSystemRoutingTable": ["203.0.113.0/24"],
        "autoOutboundsInterface": "veth-c",
        # one process owning the link and routes keeps CAP_NET_ADMIN; with workers the
        # supervisor owns them and the workers keep no capability at all
        "workers": 1,
    }
    top: dict[str, Any] = {"process": {"user": "nobody"}} if how == "config" else {}
    cfg = tmp_path / "tun.json"
    config = tun_config(settings, **top)
    config["log"]["loglevel"] = "info"
    cfg.write_text(json.dumps(config))
    os.chmod(tmp_path, 0o755)
    args = ("-user", "nobody") if how == "flag" else ()
    control = tmp_path / "tunray" / "tunray.sock"
    with topology() as topo:
        _world(topo)
        scratch = tmp_path / "mnt"
        scratch.mkdir()
        tr = TunrayProcess(topo.client, str(cfg), *args, "-control", str(control),
                           prefix=as_unprivileged_python(str(scratch)))
        try:
            line = tr.wait_for("running as")
            assert "CAP_NET_ADMIN" in line, line
            pid = tr.proc.pid
            st = _status(pid)
            assert st["Uid"].split() == [str(NOBODY)] * 4, st["Uid"]
            assert st["Gid"].split() == [str(NOBODY)] * 4, st["Gid"]
            assert st["Groups"] == "", st["Groups"]
            assert int(st["CapEff"], 16) == CAP_NET_ADMIN, st["CapEff"]
            assert int(st["CapPrm"], 16) == CAP_NET_ADMIN, st["CapPrm"]
            assert int(st["CapBnd"], 16) == CAP_NET_ADMIN, st["CapBnd"]
            assert st["NoNewPrivs"] == "1"
            for tid in _tids(pid):  # every thread: same ids, never more than CAP_NET_ADMIN
                t = _status(pid, tid)
                assert t["Uid"].split() == [str(NOBODY)] * 4, (tid, t["Uid"])
                assert int(t["CapPrm"], 16) & ~CAP_NET_ADMIN == 0, (tid, t["CapPrm"])
            # the control socket was handed to nobody before the drop, and is still served after it
            cst = os.stat(control)
            assert (cst.st_uid, stat.S_IMODE(cst.st_mode)) == (NOBODY, 0o600), (cst.st_uid, oct(cst.st_mode))
            res = subprocess.run([str(Path(sys.executable).with_name("tunray")), "stats", "-socket", str(control)],
                                 capture_output=True, text=True, timeout=20, check=False)
            assert res.returncode == 0 and json.loads(res.stdout)["pid"] == pid, res.stderr
            _carry_then_stop(topo, tr)  # still carrying traffic
        finally:
            tr.close()
        # the kept CAP_NET_ADMIN removed the TUN and its routes at shutdown
        assert link(topo.client, "trpriv0") is None, tr.text


def _persistent_tun(topo: Topology, name: str) -> int:
    """What a supervisor does: create a persistent TUN, address and route it, open it."""
    ns = topo.client
    ns_exec(ns, "ip", "tuntap", "add", "dev", name, "mode", "tun", "user", str(NOBODY), "group", str(NOBODY))
    ns_exec(ns, "ip", "addr", "add", "172.19.21.1/30", "dev", name)
    ns_exec(ns, "ip", "link", "set", name, "up")
    ns_exec(ns, "ip", "route", "add", f"{HOST}/32", "dev", name)
    with topo.enter(ns):  # TUNSETIFF attaches by name in the caller's namespace
        fd = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


@pytest.mark.timeout(60)
def test_an_unprivileged_tunray_serves_a_tun_handed_over_by_fd(tmp_path: Path) -> None:
    etc = Path(tempfile.mkdtemp(prefix="tunray-etc-"))  # pytest's tmp_path is root-only
    os.chmod(etc, 0o755)
    cfg = etc / "tun.json"
    config = tun_config(
        {"name": "trsup0"}, {"protocol": "freedom", "tag": "direct", "settings": {"redirect": f"{PROXY}:{ECHO}"}}
    )
    config["log"]["loglevel"] = "info"
    cfg.write_text(json.dumps(config))
    os.chmod(cfg, 0o644)
    with contextlib.ExitStack() as cleanup, topology() as topo:
        cleanup.callback(shutil.rmtree, etc)
        _world(topo)
        fd = _persistent_tun(topo, "trsup0")
        try:
            env = dict(os.environ, XRAY_TUN_FD=str(fd))
            setpriv = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=-all")
            scratch = tmp_path / "mnt"
            scratch.mkdir()
            prefix = as_unprivileged_python(str(scratch)) + setpriv
            tr = TunrayProcess(topo.client, str(cfg), prefix=prefix, env=env, pass_fds=(fd,))
            try:
                tr.wait_for("started")
                st = _status(tr.proc.pid)
                assert st["Uid"].split() == [str(NOBODY)] * 4 and int(st["CapEff"], 16) == 0, st
                _carry_then_stop(topo, tr)
            finally:
                tr.close()
        finally:
            os.close(fd)
        # the supervisor's TUN is left as it was: it owns it
        info = link(topo.client, "trsup0")
        assert info is not None, "an adopted persistent TUN must survive tunray"


UNIT = Path(__file__).resolve().parents[3] / "docs" / "tunray.service"


def _unit_commands(cfg: str, tun: str) -> dict[str, list[list[str]]]:
    """docs/tunray.service's Exec lines, with this test's paths, TUN name and user."""
    tunray = str(Path(sys.executable).with_name("tunray"))
    out: dict[str, list[list[str]]] = {"ExecStartPre": [], "ExecStart": [], "ExecStopPost": []}
    for line in UNIT.read_text().splitlines():
        key, sep, value = line.partition("=")
        if not sep or key not in out:
            continue
        value = value.removeprefix("+")
        value = value.replace("/usr/local/bin/tunray", tunray).replace("/etc/tunray/config.json", cfg)
        value = value.replace("user tunray group tunray", f"user {NOBODY} group {NOBODY}")
        out[key].append([tun if word == "tun0" else word for word in shlex.split(value)])
    return out


@pytest.mark.timeout(60)
def test_the_documented_systemd_unit_runs_tunray_without_privileges() -> None:
    tun = "trunit0"
    etc = Path(tempfile.mkdtemp(prefix="tunray-etc-"))
    os.chmod(etc, 0o755)
    cfg = etc / "config.json"
    cfg.write_text(json.dumps(tun_config({"name": tun, "autoOutboundsInterface": "auto"})))
    os.chmod(cfg, 0o644)
    unit = _unit_commands(str(cfg), tun)
    assert len(unit["ExecStart"]) == 1 and unit["ExecStartPre"] and unit["ExecStopPost"]
    with contextlib.ExitStack() as cleanup, topology() as topo:
        cleanup.callback(shutil.rmtree, etc)
        _world(topo)
        for argv in unit["ExecStartPre"]:  # as root, like systemd's "+"
            sh(topo.client, *argv)
        scratch = etc / "mnt"
        scratch.mkdir()
        setpriv = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=-all")
        start = unit["ExecStart"][0]
        assert start[1:3] == ["tun-fd", tun] and start[3] == start[0] and start[4:] == ["run", "-c", str(cfg)], start
        # TunrayProcess runs "<prefix> tunray run -c CFG": the unit's command is "tunray tun-fd tun0" + that
        prefix = as_unprivileged_python(str(scratch)) + setpriv + tuple(start[:3])
        tr = TunrayProcess(topo.client, str(cfg), prefix=prefix)
        try:
            tr.wait_for("started")
            st = _status(tr.proc.pid)
            assert st["Uid"].split() == [str(NOBODY)] * 4 and int(st["CapEff"], 16) == 0, st
            _carry_then_stop(topo, tr)
        finally:
            tr.close()
        assert link(topo.client, tun) is not None, "the supervisor's TUN outlives tunray"
        for argv in unit["ExecStopPost"]:
            sh(topo.client, *argv)
        assert link(topo.client, tun) is None
