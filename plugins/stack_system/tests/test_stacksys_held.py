"""Many held flows through the ``system`` stack: all open at once, all still echoing, 2 fds each.

Issue 12's target is 5,000 held flows (sing-box's ``system`` stack cannot hold them under a
20,000-descriptor limit: it holds 6 per flow).  A NATed flow needs two descriptors in the
proxy, the socket the listener accepted and ``freedom``'s; anything more per idle flow
(pipes, duplicates) divides what a process can hold under ``RLIMIT_NOFILE``.  This test
holds ``TUNRAY_HELD_FLOWS`` (3,000) flows through a real TUN and the kernel's TCP, checks
every one echoes when it opens and again once all are open, and counts the runtime's
descriptors per held flow.

World: as ``test_stacksys_e2e``: the client namespace holds the TUN and the runtime (this
process), the server namespace the echo server on ``203.0.113.10``; the app is a
subprocess in the client namespace (its descriptors are not ours).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
from typing import Any

import pytest
from tunray.testing.harness import running
from tunray.testing.netns import Topology, ns_exec

pytestmark = [pytest.mark.timeout(240)]

HOST = "203.0.113.10"
ECHO = 7000
FLOWS = int(os.environ.get("TUNRAY_HELD_FLOWS", 3000))
FDS_PER_FLOW = 2.1  # the accepted socket and freedom's, plus slack for the odd timer or log file

APP = """
import asyncio, json, resource, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

def msg(i, r):
    return f"flow {i} round {r};".encode() * (1 + i % 7)

async def echo(conn, i, r):
    reader, writer = conn
    m = msg(i, r)
    writer.write(m)
    return await asyncio.wait_for(reader.readexactly(len(m)), 60) == m

async def main():
    sem = asyncio.Semaphore(200)
    errors = []
    async def one(i):
        async with sem:
            try:
                conn = await asyncio.wait_for(asyncio.open_connection(host, port), 60)
                return conn if await echo(conn, i, 0) else None
            except (OSError, RuntimeError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
                errors.append(repr(exc))
                return None
    conns = await asyncio.gather(*(one(i) for i in range(n)))
    print(json.dumps({"held": sum(c is not None for c in conns), "errors": errors[:5]}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    async def again(i, conn):
        async with sem:
            try:
                return conn is not None and await echo(conn, i, 1)
            except (OSError, RuntimeError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                return False
    ok = await asyncio.gather(*(again(i, c) for i, c in enumerate(conns)))
    print(json.dumps({"echoed": sum(ok)}), flush=True)
    for c in conns:
        if c is not None:
            c[1].close()

asyncio.run(main())
"""


def _config(topo: Topology) -> dict[str, Any]:
    return {
        "log": {"loglevel": "warning", "access": "none"},
        "inbounds": [{"tag": "tun-in", "protocol": "tun", "settings": {
            "name": "trheld0", "gateway": ["172.19.31.1/30"], "autoSystemRoutingTable": ["203.0.113.0/24"],
            "autoOutboundsInterface": topo.client_if, "stack": "system", "maxFlows": FLOWS + 100,
        }}],
        "outbounds": [{"tag": "direct", "protocol": "freedom"}],
    }


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _line(proc: asyncio.subprocess.Process, timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    if not line:
        err = await proc.stderr.read() if proc.stderr is not None else b""
        raise AssertionError(f"the app ended early: {err.decode(errors='replace')[-500:]}")
    info: dict[str, Any] = json.loads(line)
    return info


@pytest.mark.root
async def test_thousands_of_held_flows_all_echo_at_two_descriptors_each() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = int(FLOWS * FDS_PER_FLOW) + _open_fds() + 256
    assert hard >= need, f"RLIMIT_NOFILE hard limit {hard} cannot hold {FLOWS} flows here (needs {need})"
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    topo = Topology.create("trhd")
    try:
        ns_exec(topo.server, "ip", "addr", "add", f"{HOST}/32", "dev", "lo")
        ns_exec(topo.client, "ip", "route", "add", "default", "via", str(topo.server_v4), "dev", topo.client_if)
        topo.start_echo(port=ECHO)
        with topo.enter(topo.client):
            async with running(_config(topo)):
                before = _open_fds()
                app = await asyncio.create_subprocess_exec(
                    "ip", "netns", "exec", topo.client, sys.executable, "-c", APP, HOST, str(ECHO), str(FLOWS),
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                try:
                    opened = await _line(app, 180)
                    await asyncio.sleep(0.5)  # the last relays settle (a relay may still be starting)
                    per_flow = (_open_fds() - before) / FLOWS
                    assert app.stdin is not None
                    app.stdin.write(b"go\n")
                    await app.stdin.drain()
                    echoed = await _line(app, 120)
                finally:
                    if app.returncode is None:
                        app.kill()
                    await app.wait()
        assert opened["held"] == FLOWS, f"{opened['held']} of {FLOWS} flows opened: {opened['errors']}"
        assert echoed["echoed"] == FLOWS, f"{echoed['echoed']} of {FLOWS} held flows still echo"
        assert per_flow <= FDS_PER_FLOW, f"{per_flow:.2f} descriptors per held flow (the two sockets are 2)"
    finally:
        topo.remove()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


BUDGET = """
import resource, sys
from loguru import logger
logger.remove()
logger.add(sys.stdout, format="LOG {message}")
from tunray_stack_system.stack import fd_budget
resource.setrlimit(resource.RLIMIT_NOFILE, (1000, 4096))
print("fits", fd_budget("system", 1000), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
print("fits", fd_budget("system", 5000), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def test_the_descriptor_limit_is_raised_for_max_flows_and_a_short_hard_limit_is_logged() -> None:
    """maxFlows 1,000 needs 2,256 descriptors: the soft limit rises to that, silently; maxFlows
    5,000 needs more than the hard limit 4,096: the soft limit rises to it and one line says
    (4,096 - 256) / 2 = 1,920 flows fit.  (A subprocess: lowering the hard limit is for good.)"""
    out = subprocess.run([sys.executable, "-c", BUDGET], capture_output=True, text=True, timeout=60, check=True).stdout
    lines = out.splitlines()
    assert lines[0] == "fits 1000 2256", out
    assert lines[1].startswith("LOG stack system: RLIMIT_NOFILE (hard limit 4096) holds about 1920 TCP flows"), out
    assert "fewer than maxFlows 5000" in lines[1], out
    assert lines[2] == "fits 1920 4096", out
    assert len(lines) == 3, out
