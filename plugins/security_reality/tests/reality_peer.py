"""A REALITY server to test against: Xray-core (the pinned peer) in a namespace, with its target.

Inside one :class:`~tunray.testing.peerhost.PeerHost` namespace run: tunray's echo servers
(:data:`ECHO` .. +3), a TLS 1.3 decoy site on :data:`DECOY` (REALITY's ``target``), a
TLS echo server on :data:`TLS_ECHO` (inner TLS, which makes XTLS Vision switch to raw
TCP), and Xray serving VLESS over REALITY on :data:`PORT`.  Xray resolves
:data:`ECHO_NAME` through its own ``dns.hosts`` (no real DNS).  The key pair is the one
in Xray's ``testing/scenarios/vless_test.go``.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunray.testing.certs import SelfSigned, make_cert
from tunray.testing.peerhost import PeerHost
from tunray.testing.xray import RunningXray, start_xray, vless_server

PRIVATE_KEY = "aGSYystUbf59_9_6LKRxD27rmSW_-2_nyd9YG_Gwbks"
PUBLIC_KEY = "E59WjnvZcQMu7tR7_BgyhycuEdBS-CtKxfImRCdAvFM"
SHORT_ID = "0123456789abcdef"
USER_ID = "b831381d-6324-4d53-ad4f-8cda48b30811"
SERVER_NAME = "decoy.test"
ECHO_NAME = "echo.test"
ECHO, DECOY, TLS_ECHO, PORT = 7000, 8443, 8444, 4433
VISION = "xtls-rprx-vision"
_HERE = Path(__file__).parent


@dataclass
class RealityPeer:
    host: PeerHost
    xray: RunningXray
    cert: SelfSigned  # the decoy's and the TLS echo's certificate

    def client(self, flow: str = VISION, network: str = "raw", **reality: Any) -> dict[str, Any]:
        """A tunray config: driver inbound → VLESS over REALITY to this peer."""
        settings = {"serverName": SERVER_NAME, "publicKey": PUBLIC_KEY, "shortId": SHORT_ID, "fingerprint": "chrome"}
        settings.update(reality)
        return {
            "log": {"loglevel": "warning", "access": "none"},
            "inbounds": [{"protocol": "driver"}],
            "outbounds": [
                {
                    "protocol": "vless",
                    "settings": {"address": self.host.v4, "port": PORT, "id": USER_ID, "encryption": "none", "flow": flow},
                    "streamSettings": {"network": network, "security": "reality", "realitySettings": settings},
                }
            ],
        }


def server_config(
    flow: str, stream_extra: dict[str, Any] | None = None, extra_inbounds: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    stream: dict[str, Any] = {
        "network": "raw",
        "security": "reality",
        "realitySettings": {
            "show": True,
            "dest": f"127.0.0.1:{DECOY}",
            "serverNames": [SERVER_NAME],
            "privateKey": PRIVATE_KEY,
            "shortIds": [SHORT_ID],
        },
    }
    stream.update(stream_extra or {})
    cfg = vless_server(PORT, USER_ID, flow=flow, stream=stream, loglevel="info")
    cfg["dns"] = {"hosts": {ECHO_NAME: "127.0.0.1"}}
    cfg["inbounds"] += extra_inbounds or []
    return cfg


@contextmanager
def reality_peer(
    flow: str = VISION,
    stream_extra: dict[str, Any] | None = None,
    extra_inbounds: list[dict[str, Any]] | None = None,
    decoy: str = "python",
) -> Iterator[RealityPeer]:
    """The peer; *extra_inbounds* may name ``"@server.crt"``/``"@server.key"`` (the decoy's certificate).

    *decoy* ``"openssl"`` runs ``openssl s_server`` (C, one connection at a time) as the
    target instead of the asyncio one: handshakes cost the server less, for benchmarks.
    """
    host = PeerHost.create()
    workdir = Path(tempfile.mkdtemp(prefix="tunray-reality-"))
    xray: RunningXray | None = None
    try:
        workdir.chmod(0o755)
        host.start_echo(ECHO)
        cert = make_cert(workdir, names=(SERVER_NAME, "tls-echo.test"))
        cert.key_file.chmod(0o644)
        for port, role in ((DECOY, decoy), (TLS_ECHO, "echo")):
            argv = [sys.executable, str(_HERE / "decoy_server.py"), str(port), str(cert.cert_file), str(cert.key_file), role]
            if role == "openssl":
                argv = ["openssl", "s_server", "-quiet", "-tls1_3", "-accept", str(port), "-cert", str(cert.cert_file),
                        "-key", str(cert.key_file), "-www", "-naccept", "1000000"]
            proc = host.spawn(argv, stdout=subprocess.PIPE)
            assert proc.stdout is not None
            if role == "openssl":
                _wait_listening(host, port)
            elif b"ready" not in proc.stdout.readline():
                raise RuntimeError(f"{role} TLS server did not start")
        files: dict[str, str | bytes] = {"server.crt": cert.cert_pem, "server.key": cert.key_pem}
        xray = start_xray(host, server_config(flow, stream_extra, extra_inbounds), port=PORT, files=files)
        yield RealityPeer(host, xray, cert)
    finally:
        if xray is not None:
            xray.stop()
        host.remove()
        for f in workdir.iterdir():
            f.unlink()
        workdir.rmdir()


def _wait_listening(host: PeerHost, port: int) -> None:
    deadline = time.monotonic() + 10
    while not host.listening(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on :{port}")
        time.sleep(0.05)


class InnerTls:
    """An app speaking TLS over a driver ``AppEnd`` (MemoryBIO), as a browser would inside the tunnel."""

    def __init__(self, app: Any, cert: SelfSigned, server_name: str = "tls-echo.test") -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cadata=cert.cert_pem)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.app = app
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=server_name)
        self.lock = asyncio.Lock()

    async def _flush(self) -> None:
        if self.outgoing.pending:
            await self.app.send(self.outgoing.read())

    async def handshake(self) -> None:
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                data = await self.app.recv(1 << 16)
                if not data:
                    raise ConnectionError("closed during the inner handshake") from None
                self.incoming.write(data)
        await self._flush()

    async def send(self, data: bytes) -> None:
        self.obj.write(data)
        await self._flush()

    async def recv(self) -> bytes:
        while True:
            try:
                return self.obj.read(1 << 18)
            except ssl.SSLWantReadError:
                data = await self.app.recv(1 << 18)
                if not data:
                    return b""
                self.incoming.write(data)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
