"""The shipped example configs (``configs/vless-*.json``) carry real traffic to sing-box.

Each test loads one example, rewrites only where its ``proxy`` outbound points
(address, port, ``serverName``, and the pinned hash or a trusted certificate), puts
the driver inbound in place of the TUN, keeps the rest (outbounds, routing, TLS and
transport settings) and pushes TCP and UDP through it to an echo server behind a
sing-box VLESS server configured to match the example.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from test_vless_interop import _echo_bulk, _tcp
from tunray.log import AccessLog
from tunray.net.address import Destination, Network, parse_host
from tunray.testing.certs import SelfSigned, make_cert
from tunray.testing.harness import driver_of, running
from vless_servers import EARLY_DATA, VISION, RunningServer, sing_box_transport, start_sing_box

CONFIGS = Path(__file__).resolve().parents[3] / "configs"

# example -> (sing-box transport, flow) of the matching server
EXAMPLES: dict[str, tuple[dict[str, Any] | None, str]] = {
    "vless-tls.json": (None, ""),
    "vless-vision.json": (None, VISION),
    "vless-ws.json": (sing_box_transport("ws", early_data=EARLY_DATA), ""),
    "vless-grpc.json": (sing_box_transport("grpc"), ""),
}


def load_example(name: str, server: RunningServer, cert: SelfSigned) -> dict[str, Any]:
    """The example *name* pointed at *server*; the driver inbound replaces its inbounds."""
    cfg: dict[str, Any] = json.loads((CONFIGS / name).read_text())
    (proxy,) = [ob for ob in cfg["outbounds"] if ob["protocol"] == "vless"]
    settings = proxy["settings"]
    where = settings["vnext"][0] if "vnext" in settings else settings
    where["address"], where["port"] = server.host, server.port
    tls = proxy["streamSettings"]["tlsSettings"]
    tls["serverName"] = "vless.test"
    if "pinnedPeerCertSha256" in tls:
        tls["pinnedPeerCertSha256"] = [cert.sha256_hex]
    else:
        tls["certificates"] = [{"usage": "verify", "certificateFile": str(cert.cert_file)}]
    cfg["inbounds"] = [{"protocol": "driver", "tag": "drv"}]
    cfg["log"] = {"loglevel": "none", "access": "none"}
    return cfg


@pytest.mark.parametrize("name", sorted(EXAMPLES))
@pytest.mark.timeout(60)
async def test_example_config_carries_traffic(name: str, tmp_path: Path, echo_port: int) -> None:
    transport, flow = EXAMPLES[name]
    cert = make_cert(tmp_path)
    server = start_sing_box(tmp_path, tls=cert, flow=flow, transport=transport)
    log = io.StringIO()
    try:
        cfg = load_example(name, server, cert)
        tag = next(ob["tag"] for ob in cfg["outbounds"] if ob["protocol"] == "vless")
        async with running(cfg, access_log=AccessLog(log)) as rt:
            drv = driver_of(rt)
            await asyncio.gather(
                _echo_bulk(drv, _tcp("127.0.0.1", echo_port), 8 << 20, 40000),
                *(_echo_bulk(drv, _tcp("127.0.0.1", echo_port), 64 * 1024, 41000 + i) for i in range(8)),
            )
            target = Destination(Network.UDP, parse_host("127.0.0.1"), echo_port)
            app, task = drv.open_udp("10.0.0.2:5353", target)
            for i in range(5):
                app.send(b"example-%d" % i, target)
            got = {(await asyncio.wait_for(app.recv(), 5)).data for _ in range(5)}
            assert got == {b"example-%d" % i for i in range(5)}
            app.close()
            await asyncio.wait_for(task, 5)
    finally:
        server.stop()
    text = log.getvalue()
    # every flow took the example's proxy outbound (none its direct or block);
    # ">>" marks the default outbound, "->" a routing rule
    routed = re.findall(r"\[drv (?:->|>>) (\S+)\]", text)
    assert routed == [tag] * 10, text
