"""tunray.workers: the supervisor (fork, restart, SIGTERM, give-up), shared counters, PSS; the
steering program against the kernel (root)."""

from __future__ import annotations

import ipaddress
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from tunray.net import steering
from tunray.workers import SharedCounters, process_tree, pss_kib, total_pss_kib, unique_resident_kib

SUPERVISED = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    from tunray.workers import run_workers
    out = Path(sys.argv[1])
    mode = sys.argv[2]

    def child(k):
        with open(out / f"start-{k}-{os.getpid()}", "w"):
            pass
        if mode == "flap":
            os._exit(3)
        stop = []
        signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
        while not stop:
            time.sleep(0.02)
        if mode == "stubborn":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(60)
        return 0

    def release():
        (out / "released").write_text("yes")

    sys.exit(run_workers(3, child, release, kill_after=1.0))
""")


def _start(tmp_path: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", SUPERVISED, str(tmp_path), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _starts(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.glob("start-*"))


def _wait(pred: object, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


@pytest.mark.timeout(30)
def test_a_dead_worker_is_restarted_and_sigterm_stops_all(tmp_path: Path) -> None:
    proc = _start(tmp_path, "normal")
    try:
        _wait(lambda: len(_starts(tmp_path)) == 3, 10)
        children = [p for p in process_tree(proc.pid) if p != proc.pid]
        assert len(children) == 3
        victim = int(_starts(tmp_path)[1].split("-")[2])
        os.kill(victim, signal.SIGKILL)
        _wait(lambda: len(_starts(tmp_path)) == 4, 10)
        assert sorted(s.split("-")[1] for s in _starts(tmp_path)) == ["0", "1", "1", "2"]
        family = process_tree(proc.pid)
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        assert time.monotonic() - t < 2.0
        assert proc.returncode == 0, err
        assert f"worker 1 (pid {victim}) killed by SIGKILL; restarting" in err
        assert (tmp_path / "released").read_text() == "yes"
        assert not [p for p in family if os.path.exists(f"/proc/{p}")]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(30)
def test_a_worker_ignoring_sigterm_is_killed_after_the_deadline(tmp_path: Path) -> None:
    proc = _start(tmp_path, "stubborn")
    try:
        _wait(lambda: len(_starts(tmp_path)) == 3, 10)
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        took = time.monotonic() - t
        assert 0.9 < took < 3.0, took
        assert "still running after 1 s: killed" in err
        assert (tmp_path / "released").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(30)
def test_workers_dying_at_start_stop_the_supervisor(tmp_path: Path) -> None:
    proc = _start(tmp_path, "flap")
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert "keeps dying at start; stopping" in err and "exited with code 3" in err
    assert (tmp_path / "released").exists()


def test_shared_counters_sum_rows_written_by_forked_workers() -> None:
    total = SharedCounters(["a", "b"], rows=3)
    pids = []
    for k in range(3):
        pid = os.fork()
        if pid == 0:
            mine = total.for_worker(k)
            for _ in range(1000):
                mine["a"] = mine.get("a", 0) + 1
            mine["b"] = mine.get("b", 0) + k
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        assert os.waitpid(pid, 0)[1] == 0
    assert total["a"] == 3000 and total["b"] == 0 + 1 + 2
    assert dict(total) == {"a": 3000, "b": 3}
    with pytest.raises(TypeError):
        total["a"] = 5
    total["other"] = 7  # not shared, but kept
    assert total["other"] == 7


def test_pss_of_this_process_tree() -> None:
    """The tree's PSS is its members' PSS summed: a child process adds its own share."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while pss_kib(child.pid) < 1000 and time.monotonic() < deadline:
            time.sleep(0.05)  # the child is still starting Python
        assert child.pid in process_tree(os.getpid())
        members = {}
        for p in process_tree(os.getpid()):
            try:
                members[p] = pss_kib(p)
            except OSError:
                pass  # a child that ended (or a zombie) has no memory map; total_pss_kib skips it too
        assert members[os.getpid()] > 1000 and members[child.pid] > 1000, members
        total = total_pss_kib(os.getpid())
        # pages change hands (and PSS shares with them) between the reads: allow 2 %
        assert abs(total - sum(members.values())) <= sum(members.values()) // 50, (total, members)
    finally:
        child.communicate(b"")


@pytest.mark.root
def test_resident_pages_of_a_forked_group_count_shared_pages_once() -> None:
    """A 32 MiB buffer shared copy-on-write with a child counts once (summed RSS: twice)."""

    def rss_kib(pid: int) -> int:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    buf = bytearray(os.urandom(1 << 20)) * 32  # touched: resident
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os.close(r)
        os.write(w, b"1")
        time.sleep(30)
        os._exit(0)
    os.close(w)
    try:
        assert os.read(r, 1) == b"1"
        group = unique_resident_kib(os.getpid())
        parent = rss_kib(os.getpid())
        assert parent <= group < parent + 16 * 1024, (group, parent, rss_kib(child))  # the 32 MiB once
        assert group < parent + rss_kib(child) - 24 * 1024  # summed RSS counts it twice
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(r)
    del buf


# --- steering against the kernel ----------------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.timeout(60)
def test_the_steering_program_picks_the_queue_queue_for_predicts() -> None:
    """Four queues; UDP from 40 source ports per family: each packet is read on the predicted queue."""
    from tunray.net.tun import open_tun
    from tunray.testing.netns import delete_namespace, ns_exec

    ns = f"trsteer-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    devices = []
    try:
        first, name = open_tun("trq%d", multi_queue=True)
        devices = [first] + [open_tun(name, multi_queue=True)[0] for _ in range(3)]
        prog = steering.load()
        try:
            steering.attach(first.fileno(), prog)
        finally:
            os.close(prog)
        subprocess.run(["ip", "link", "set", name, "netns", ns], check=True)
        for cmd in (("link", "set", name, "up"), ("addr", "add", "10.5.0.1/24", "dev", name),
                    ("addr", "add", "fd05::1/64", "dev", name, "nodad")):
            ns_exec(ns, "ip", *cmd)
        script = ("import socket,sys\nfor p in range(20000, 20040):\n"
                  " s=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)\n"
                  " s.bind((sys.argv[1], p)); s.sendto(b'x', (sys.argv[2], 53)); s.close()\n")
        ns_exec(ns, sys.executable, "-c", script, "10.5.0.1", "10.5.0.9")
        ns_exec(ns, sys.executable, "-c", script, "fd05::1", "fd05::9")
        time.sleep(0.2)
        seen: dict[tuple[int, int], int] = {}
        for q, dev in enumerate(devices):
            while (p := dev.read()) is not None:
                v4 = p[0] >> 4 == 4
                if (p[9] if v4 else p[6]) != 17:
                    continue
                src = p[12:16] if v4 else p[8:24]
                port = struct.unpack_from("!H", p, (p[0] & 15) * 4 if v4 else 40)[0]
                seen[(4 if v4 else 6, port)] = q
                assert steering.queue_for(src, port, 4) == q, f"IPv{4 if v4 else 6} port {port} read on queue {q}"
        assert len(seen) == 80, f"{len(seen)} of 80 datagrams read"
        assert len(set(seen.values())) == 4, "the hash left a queue unused"
        ip4 = ipaddress.ip_address("10.5.0.1").packed
        assert steering.queue_for(ip4, 20000, 1) == 0
    finally:
        for dev in devices:
            dev.close()
        delete_namespace(ns)
