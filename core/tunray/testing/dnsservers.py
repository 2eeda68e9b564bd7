"""Real DNS servers for tests, run inside a test namespace: dnsmasq and dnsdist (DoH).

``start_dnsmasq(topo, ns, listen, zone, tmp)`` serves *zone* (name -> addresses,
``txt`` records, wildcard suffixes, names with enough A records to overflow a UDP
answer; local answers carry TTL 300) on
``listen`` port 53, UDP and TCP, authoritative for ``.test`` (other names there are
NXDOMAIN; nothing is forwarded anywhere).  ``start_dnsdist(...)`` puts DNS over HTTPS
(HTTP/2 and HTTP/1.1, RFC 8484; also cleartext on port 80) in front of a backend with a self-signed certificate
from :mod:`tunray.testing.certs`.  Both are Debian packages (see ``scripts/install``)
and are stopped with the topology.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tunray.testing.certs import SelfSigned, make_cert
from tunray.testing.netns import Topology, ns_exec


@dataclass
class Zone:
    a: dict[str, list[str]] = field(default_factory=dict)
    aaaa: dict[str, list[str]] = field(default_factory=dict)
    txt: dict[str, str] = field(default_factory=dict)
    #: every name under the key (and the key itself) has this IPv4 address
    wildcard: dict[str, str] = field(default_factory=dict)


def have(binary: str) -> bool:
    return shutil.which(binary) is not None


def _wait(ns: str, argv: list[str], what: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while True:
        if ns_exec(ns, *argv, check=False).returncode == 0:
            return
        if time.monotonic() > end:
            raise RuntimeError(f"{what} in {ns} did not come up")
        time.sleep(0.1)


def start_dnsmasq(topo: Topology, ns: str, listen: str, zone: Zone, tmp: Path) -> subprocess.Popen[bytes]:
    hosts = tmp / f"hosts-{listen}"
    lines = [f"{ip} {name}" for name, ips in zone.a.items() for ip in ips]
    lines += [f"{ip} {name}" for name, ips in zone.aaaa.items() for ip in ips]
    hosts.write_text("\n".join(lines) + "\n")
    argv = [
        "dnsmasq",
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        f"--addn-hosts={hosts}",
        "--local=/test/",
        f"--listen-address={listen}",
        "--bind-interfaces",
        "--port=53",
        "--user=root",
        f"--pid-file={tmp / f'dnsmasq-{listen}.pid'}",
        "--cache-size=0",
        "--local-ttl=300",
        "--log-facility=-",
    ]
    argv += [f"--txt-record={name},{text}" for name, text in zone.txt.items()]
    argv += [f"--address=/{suffix}/{ip}" for suffix, ip in zone.wildcard.items()]
    proc = topo.spawn(ns, argv)
    _wait(ns, ["dig", "+short", "+time=1", "+tries=1", f"@{listen}", "ready.probe.test"], "dnsmasq")
    return proc


def start_dnsdist(
    topo: Topology, ns: str, listen: str, backend: str, tmp: Path, *, names: tuple[str, ...] = ("doh.test",)
) -> tuple[subprocess.Popen[bytes], SelfSigned]:
    """DoH on ``listen``:443 (TLS) and :80 (cleartext, for ``h2c``), path ``/dns-query``, forwarding to ``backend``:53."""
    cert = make_cert(tmp, names=names, ips=(listen,), stem="dnsdist")
    conf = tmp / "dnsdist.conf"
    conf.write_text(
        "\n".join(
            [
                'setSecurityPollSuffix("")',
                f'newServer({{address="{backend}:53", healthCheckMode="up"}})',
                f'addDOHLocal("{listen}:443", "{cert.cert_file}", "{cert.key_file}", "/dns-query")',
                f'addDOHLocal("{listen}:80")',  # cleartext: HTTP/2 with prior knowledge (h2c) and HTTP/1.1
                "",
            ]
        )
    )
    proc = topo.spawn(ns, ["dnsdist", "--supervised", "--disable-syslog", "-C", str(conf)])
    _wait(ns, ["bash", "-c", f"exec 3<>/dev/tcp/{listen}/443"], "dnsdist")
    return proc, cert
