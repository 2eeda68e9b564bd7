"""``tunray run`` with TUN worker processes, end to end, on every stack that carries TCP and UDP.

World (per test)::

    client ns: app ──> trwk0 (172.19.18.1/30, fd00:18::1/126, 2 queues) ── tunray: supervisor + 2 workers
               veth-c 10.200.0.1 ───────────────────────────── veth-s 10.200.0.2 (server ns)
                                                                lo: 203.0.113.10, .11 + echo / UDP "who am I"

One run: 20 held flows; one worker SIGKILLed mid-run (the supervisor logs it and forks it
again; held flows on the other worker keep echoing); 1,000 concurrent flows across both
workers; full-cone UDP (one app socket, two peers) whichever queue each datagram would
have taken; SIGTERM stops everything within 5 s and leaves no process, TUN or route; the
shared access log has one well-formed line per flow and event.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tunray.net.steering import queue_for
from tunray.plugin.manager import PluginManager
from tunray.testing import stackclient
from tunray.testing.netns import Topology, ns_exec
from tunray.workers import process_tree, total_pss_kib

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]

TUN = "trwk0"
HOST_A, HOST_B = "203.0.113.10", "203.0.113.11"
ECHO, WHO = 7000, 7100
WORKERS = int(os.environ.get("TUNRAY_WORKERS_N", 2))
STACKS = [n for n, cls in sorted(PluginManager().registry.stacks.items()) if n in ("python", "system", "mixed")]
LINE = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{6} from \S+ (accepted|rejected) \S+( \[\S+\])?( .*)?$")

WHO_SERVER = """
import select, socket, sys
socks = []
for host in sys.argv[2:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, int(sys.argv[1])))
    socks.append(s)
print("ready", flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        data, peer = s.recvfrom(2048)
        s.sendto(f"{peer[0]}:{peer[1]}".encode(), peer)
"""


def _children(pid: int) -> list[int]:
    return [p for p in process_tree(pid) if p != pid]


def _wait(pred: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _link_up(ns: str) -> bool:
    out = ns_exec(ns, "ip", "-j", "route", "show", "dev", TUN, check=False).stdout
    return bool(out.strip()) and any(r.get("dst") == "203.0.113.0/24" for r in json.loads(out))


def _echo_once(conn: socket.socket, data: bytes) -> bool:
    try:
        conn.sendall(data)
        got = b""
        while len(got) < len(data):
            chunk = conn.recv(len(data) - len(got))
            if not chunk:
                return False
            got += chunk
        return got == data
    except OSError:
        return False


@pytest.mark.parametrize("stack", STACKS)
def test_workers_share_the_load_survive_a_crash_and_stop_cleanly(stack: str, tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    cfg = {
        "log": {"loglevel": "info", "access": str(access)},
        "inbounds": [{"tag": "tun-in", "protocol": "tun", "settings": {
            "name": TUN, "mtu": 9000, "gateway": ["172.19.18.1/30", "fd00:18::1/126"],
            "autoSystemRoutingTable": ["203.0.113.0/24"], "autoOutboundsInterface": "veth-c",
            "stack": stack, "workers": WORKERS,
        }}],
        "outbounds": [{"tag": "direct", "protocol": "freedom"}],
    }
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    tunray = str(Path(sys.executable).with_name("tunray"))
    topo = Topology.create("trw")
    proc: subprocess.Popen[str] | None = None
    held: list[socket.socket] = []
    try:
        ns = topo.client
        for host in (HOST_A, HOST_B):
            ns_exec(topo.server, "ip", "addr", "add", f"{host}/32", "dev", "lo")
        ns_exec(ns, "ip", "route", "add", "default", "via", str(topo.server_v4), "dev", topo.client_if)
        topo.start_echo(port=ECHO)
        topo.spawn(topo.server, [sys.executable, "-c", WHO_SERVER, str(WHO), HOST_A, HOST_B], ready=b"ready")
        proc = subprocess.Popen(["ip", "netns", "exec", ns, tunray, "run", "-c", str(path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait(lambda: proc.poll() is not None or (_link_up(ns) and len(_children(proc.pid)) == WORKERS), 20,
              "the TUN, its route and the workers")
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(1.0)  # the workers attach their stacks
        workers = _children(proc.pid)
        idle_pss = total_pss_kib(proc.pid)
        print(f"{stack}: idle PSS of supervisor + {WORKERS} workers: {idle_pss / 1024:.1f} MiB")

        # 20 held flows, echoing
        with topo.enter(ns):
            for _ in range(20):
                held.append(socket.create_connection((HOST_A, ECHO), timeout=10))
        assert all(_echo_once(c, b"hello") for c in held), "a held flow did not echo"
        # With a named uplink a worker needs no netlink thread (nor its pyroute2 loop and malloc
        # arena): the supervisor configured the link.  Dialing a numeric address needs no resolver
        # thread either (tunray.net.dialer.connect_socket).  So every worker runs on one thread.
        threads = {w: sorted(os.listdir(f"/proc/{w}/task")) for w in workers}
        assert all(len(t) == 1 for t in threads.values()), f"worker threads: {threads}"

        # a worker dies mid-run: logged, forked again, the other worker's flows carry on
        victim = workers[0]
        os.kill(victim, signal.SIGKILL)
        _wait(lambda: victim not in _children(proc.pid) and len(_children(proc.pid)) == WORKERS, 10,
              "the supervisor to fork the killed worker again")
        time.sleep(1.0)
        # which queue did the victim own?  The survivors' flows are those steered elsewhere.
        queue_of: dict[int, int] = {}
        for c in held:
            ip, port = c.getsockname()[:2]
            queue_of[port] = queue_for(ipaddress.ip_address(ip).packed, port, WORKERS)
        alive = [c for c in held if _echo_once(c, b"still there")]
        alive_queues = {queue_of[c.getsockname()[1]] for c in alive}
        assert len(alive_queues) == 1 and len(alive) == sum(
            1 for q in queue_of.values() if q in alive_queues), (
            f"flows of the surviving worker must all still echo: {len(alive)} of {len(held)} did, "
            f"queues {sorted(queue_of.values())}")

        # 1,000 concurrent flows across both workers (the restarted one included)
        result = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-S", stackclient.__file__, "many",
                                 HOST_A, str(ECHO), "1000"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        many = json.loads(result.stdout.splitlines()[-1])
        if os.environ.get("TUNRAY_WORKERS_DEBUG"):
            proc.send_signal(signal.SIGTERM)
            print(proc.communicate(timeout=15)[1][-6000:])
        assert many == {"ok": 1000, "n": 1000}, result.stderr[-2000:]

        # full-cone UDP: one app socket, two peers -> one outbound mapping, whatever the queue
        with topo.enter(ns):
            socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(16)]
        try:
            for s in socks:
                s.settimeout(5)
                seen = set()
                for host in (HOST_A, HOST_B):
                    s.sendto(b"who", (host, WHO))
                    data, peer = s.recvfrom(2048)
                    assert peer == (host, WHO)
                    seen.add(data.decode())
                assert len(seen) == 1, f"one app socket was mapped to {seen}: not endpoint-independent"
        finally:
            for s in socks:
                s.close()

        # SIGTERM: everything gone within 5 s
        for c in held:
            c.close()
        held.clear()
        family = process_tree(proc.pid)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        elapsed = time.monotonic() - signalled
        assert proc.returncode == 0, err[-3000:]
        assert elapsed < 5.0, f"stopping took {elapsed:.1f} s"
        assert not [p for p in family if os.path.exists(f"/proc/{p}")], "a worker outlived SIGTERM"
        assert TUN not in ns_exec(ns, "ip", "link", check=False).stdout, "the TUN outlived SIGTERM"
        assert f"(pid {victim}) killed by SIGKILL; restarting" in err, err[-3000:]
        lines = access.read_text().splitlines()
        bad = [line for line in lines if not LINE.match(line)]
        assert not bad, f"malformed or interleaved access log lines: {bad[:3]}"
        assert sum("accepted tcp:" in line for line in lines) >= 1020
    finally:
        for c in held:
            c.close()
        if proc is not None and proc.poll() is None:
            for p in process_tree(proc.pid):
                os.kill(p, signal.SIGKILL)
            proc.wait()
        topo.remove()
