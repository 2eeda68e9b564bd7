"""Config of the listening inbounds: what takes effect, what is refused, and where."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from tunray.config.errors import ConfigError
from tunray.config.model import build_config
from tunray.plugin.manager import PluginManager
from tunray.testing.harness import running

REGISTRY = PluginManager().registry


def _build(inbound: dict[str, Any]) -> Any:
    return build_config({"inbounds": [inbound], "outbounds": [{"protocol": "freedom"}]}, REGISTRY)


@pytest.mark.parametrize(
    ("inbound", "path", "fragment"),
    [
        ({"protocol": "socks"}, "inbounds[0].port", "required"),
        ({"protocol": "socks", "port": 1080, "listen": "not-an-ip"}, "inbounds[0].listen", "not an IP address"),
        ({"protocol": "socks", "port": "1080-99999"}, "inbounds[0].port", "above 65535"),
        ({"protocol": "socks", "port": 1080, "settings": {"ip": "x"}}, "inbounds[0].settings.ip", "IP address"),
        ({"protocol": "socks", "port": 1080, "settings": {"auth": "gssapi"}}, "inbounds[0].settings.auth", "one of"),
        ({"protocol": "socks", "port": 1080, "streamSettings": {"network": "ws"}}, "inbounds[0].streamSettings.network", "not supported"),
        ({"protocol": "http", "port": 1080, "streamSettings": {"security": "tls"}}, "inbounds[0].streamSettings.security", "not supported"),
        ({"protocol": "mixed", "port": 1080, "streamSettings": {"sockopt": {"tcpFastOpen": True}}}, "inbounds[0].streamSettings.sockopt.tcpFastOpen", "not supported"),
        ({"protocol": "socks", "port": 1080, "streamSettings": {"tcpSettings": {"header": {"type": "http"}}}}, "inbounds[0].streamSettings.rawSettings.header", "not supported"),
        ({"protocol": "socks", "port": 1080, "streamSettings": {"rawSettings": {"acceptProxyProtocol": True}}}, "inbounds[0].streamSettings.rawSettings.acceptProxyProtocol", "not supported"),
        ({"protocol": "socks", "port": 1080, "settings": {"accounts": [{"user": "a", "pass": "b"}]}}, "inbounds[0].settings.accounts", "no effect"),
        ({"protocol": "socks", "port": 1080, "settings": {"auth": "password"}}, "inbounds[0].settings.accounts", "required"),
        ({"protocol": "dokodemo-door", "port": 1, "settings": {"network": "sctp"}}, "inbounds[0].settings.network[0]", "one of"),
        ({"protocol": "tunnel", "port": 1, "settings": {"portMap": {"80": "nohostport"}}}, "inbounds[0].settings.portMap[0]", "bad entry"),
    ],
)
def test_refusals_name_the_path(inbound: dict[str, Any], path: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        _build(inbound)
    assert info.value.path == path and fragment in info.value.message, str(info.value)


def test_accepted_forms() -> None:
    cfg = _build({"protocol": "dokodemo-door", "port": "5300", "settings": {"address": "10.0.0.1", "port": 53, "network": "tcp,udp", "followRedirect": False}})
    assert cfg.inbounds[0].settings.network == ["tcp", "udp"]
    cfg = _build({"protocol": "socks", "listen": "/run/tunray-test.sock"})  # no port with a Unix socket
    assert cfg.inbounds[0].listen == "/run/tunray-test.sock"
    cfg = _build({"protocol": "http", "port": 8080, "settings": {"users": [{"user": "a", "pass": "b"}], "allowTransparent": True}})
    assert cfg.inbounds[0].settings.accounts[0].user == "a"


async def test_a_port_in_use_fails_the_start_naming_the_inbound() -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ConfigError, match=r"cannot listen on 127\.0\.0\.1:"):
            async with running({"inbounds": [{"protocol": "socks", "listen": "127.0.0.1", "port": port}], "outbounds": [{"protocol": "freedom"}]}):
                pass
    finally:
        blocker.close()
        await blocker.wait_closed()


async def test_socks_on_a_unix_socket_with_mode(tmp_path: Path) -> None:
    path = tmp_path / "socks.sock"
    cfg = {
        "log": {"loglevel": "none", "access": "none"},
        "inbounds": [{"protocol": "socks", "listen": f"{path},0600"}],
        "outbounds": [{"protocol": "blackhole", "settings": {"response": {"type": "http"}}}],
    }
    async with running(cfg):
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b"\x05\x01\x00\x05\x01\x00\x03\x06a.test\x00\x50")
        assert await reader.readexactly(2) == b"\x05\x00"
        reply = await reader.readexactly(10)
        assert reply[:2] == b"\x05\x00"  # the blackhole's http response accepts, then answers 403
        assert (await reader.read(-1)).startswith(b"HTTP/1.1 403")
        writer.close()
    assert not path.exists(), "the socket file is removed on stop"
