"""Where one proxied connection's time goes: a packet capture in the client namespace, cut into steps.

Used by ``bench_vless_tun.py --timeline``.  tcpdump records, in the namespace where the app
and the client proxy run, both the app's packets on the TUN and the proxy's packets to the
VLESS server on the veth, with kernel timestamps.  For every app connection of a
sequential run (one at a time, so the next server connection after the app's SYN is its
own) the steps are::

    app SYN ─1─> SYN to the server ─2─> ClientHello (or the request, raw) ─3─> server's first
    answer ─4─> SYN-ACK to the app ─5─> app's data ─6─> the request record to the server
    ─7─> the server's response ─8─> the response to the app ─9─> the app's next SYN

From the first step a client does in another order (a kernel that answers the app's SYN
at once) its steps are left out ("–"); the cycle is always the whole connection.  Needs
``tcpdump`` (Debian package); the bench says so and skips the timeline without it.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
from pathlib import Path

STEPS = (
    "app SYN -> SYN to the server",
    "-> first bytes to the server",
    "-> server's first answer",
    "-> SYN-ACK to the app",
    "-> app's data",
    "-> request sent to the server",
    "-> server's response",
    "-> response to the app",
    "-> app FIN, next SYN",
    "cycle",
)
_LINE = re.compile(r"^(\d+\.\d+) \S+\s+(In|Out)\s+IP (\S+) > (\S+): Flags \[([^\]]+)\].*length (\d+)")
Event = tuple[float, str, str, str, int]  # time, source, destination, flags, payload length


def available() -> bool:
    return shutil.which("tcpdump") is not None


def start(namespace: str, path: Path) -> subprocess.Popen[bytes]:
    """Capture TCP headers in *namespace* into *path* until :func:`stop`."""
    return subprocess.Popen(
        ["ip", "netns", "exec", namespace, "tcpdump", "-Z", "root", "-i", "any", "-n", "-s", "128", "-w", str(path), "tcp"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(10)


def _events(path: Path) -> list[Event]:
    text = subprocess.run(["tcpdump", "-r", str(path), "-n", "-tt"], capture_output=True, text=True).stdout
    out = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            out.append((float(m[1]), m[3], m[4], m[5], int(m[6])))
    return out


def steps(path: Path, app_port: int, server_port: int) -> dict[str, float]:
    """Median µs per step over the capture's app connections (the first and last few are left out)."""
    ev = _events(path)
    app_dst, srv_dst = f".{app_port}", f".{server_port}"
    syns = [i for i, e in enumerate(ev) if e[3] == "S" and e[2].endswith(app_dst)]
    found: dict[str, list[float]] = {name: [] for name in STEPS}
    for i in syns[3:-3]:
        t0, app = ev[i][0], ev[i][1]
        window = ev[i : i + 200]
        try:
            dial = next(e for e in window if e[3] == "S" and e[2].endswith(srv_dst))
            conn = [e for e in window if dial[1] in (e[1], e[2])]
            sent = [e for e in conn if e[1] == dial[1] and e[4] > 0]
            got = [e for e in conn if e[2] == dial[1] and e[4] > 0]
            mine = [e for e in window if app in (e[1], e[2])]
            synack = next(e for e in mine if e[3] == "S.")
            data = next(e for e in mine if e[1] == app and e[4] > 0)
            answer = next(e for e in mine if e[2] == app and e[4] > 0)
            nxt = next(e for e in ev[i + 1 :] if e[3] == "S" and e[2].endswith(app_dst))
            request = next(e for e in sent if e[0] >= data[0])
            response = next(e for e in got if e[0] > request[0])
        except StopIteration:
            continue
        marks = (dial, sent[0], got[0], synack, data, request, response, answer, nxt)
        prev = t0
        for name, mark in zip(STEPS, marks, strict=False):
            if mark[0] < prev:
                break  # this client does the rest in another order: only its cycle is comparable
            found[name].append((mark[0] - prev) * 1e6)
            prev = mark[0]
        found["cycle"].append((nxt[0] - t0) * 1e6)
    return {name: statistics.median(v) for name, v in found.items() if v}
