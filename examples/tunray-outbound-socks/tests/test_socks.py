"""socks against a real SOCKS5 server (tests/socks_server.py) and tunray's echo servers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from socks_server import SocksServer
from tunray.config.errors import ConfigError
from tunray.config.model import build_config
from tunray.net.address import Destination, Network, parse_host
from tunray.plugin.manager import PluginManager
from tunray.testing.conformance import check_outbound
from tunray.testing.harness import driver_of, running
from tunray_socks import codec


def classic(port: int, user: str = "", password: str = "") -> dict[str, Any]:
    server: dict[str, Any] = {"address": "127.0.0.1", "port": port}
    if user:
        server["users"] = [{"user": user, "pass": password}]
    return {"protocol": "socks", "settings": {"servers": [server]}}


def flat(port: int, user: str = "", password: str = "") -> dict[str, Any]:
    settings: dict[str, Any] = {"address": "127.0.0.1", "port": port}
    if user:
        settings.update(user=user, **{"pass": password})
    return {"protocol": "socks", "settings": settings}


@pytest.mark.timeout(120)
async def test_conformance_with_auth_classic_settings(echo_port: int) -> None:
    async with SocksServer(users={"alice": "s3cret"}) as server:
        await check_outbound(classic(server.port, "alice", "s3cret"), "127.0.0.1", port=echo_port)
        assert ("127.0.0.1", echo_port) in server.connects, "TCP did not go through the SOCKS server"
        assert server.associations >= 1 and server.udp_packets >= 2, "UDP did not go through the relay"


@pytest.mark.timeout(120)
async def test_conformance_without_auth_flat_settings(echo_port: int) -> None:
    async with SocksServer() as server:
        await check_outbound(flat(server.port), "127.0.0.1", port=echo_port)
        assert server.connects and server.associations >= 1


async def _dial(outbound: dict[str, Any], target: Destination) -> tuple[bool, bytes]:
    cfg = {"log": {"loglevel": "none"}, "inbounds": [{"protocol": "driver"}], "outbounds": [outbound]}
    async with running(cfg) as rt:
        app, task = driver_of(rt).open_tcp("10.0.0.2:1234", target)
        for _ in range(500):
            if app.accepted or app.reset:
                break
            await asyncio.sleep(0.01)
        if app.reset:
            await task
            return False, b""
        await app.send(b"hello")
        app.shutdown_write()
        data = await app.recv_all()
        await task
        return True, data


async def test_wrong_password_resets_the_app(echo_port: int) -> None:
    target = Destination(Network.TCP, parse_host("127.0.0.1"), echo_port)
    async with SocksServer(users={"alice": "s3cret"}) as server:
        assert await _dial(flat(server.port, "alice", "wrong"), target) == (False, b"")
        assert server.auth_failures == 1 and not server.connects
        assert await _dial(flat(server.port, "alice", "s3cret"), target) == (True, b"hello")


async def test_domain_targets_are_sent_as_domains(echo_port: int) -> None:
    async with SocksServer() as server:
        target = Destination(Network.TCP, "localhost", echo_port)
        assert await _dial(flat(server.port), target) == (True, b"hello")
        assert server.connects == [("localhost", echo_port)]  # the server resolved it, not tunray


@pytest.mark.parametrize(
    ("settings", "path"),
    [
        ({}, "outbounds[0].settings.address"),
        ({"address": "127.0.0.1"}, "outbounds[0].settings.port"),
        ({"servers": []}, "outbounds[0].settings.servers"),
        ({"servers": [{"address": "127.0.0.1"}]}, "outbounds[0].settings.servers[0].port"),
        ({"servers": [{"address": "h", "port": 1, "users": [{"user": 5}]}]}, "outbounds[0].settings.servers[0].users[0].user"),
        ({"address": "h", "port": 1, "servers": [{"address": "h", "port": 1}]}, "outbounds[0].settings"),
    ],
)
def test_bad_settings_name_the_json_path(settings: dict[str, Any], path: str) -> None:
    raw = {"outbounds": [{"protocol": "socks", "settings": settings}]}
    with pytest.raises(ConfigError) as info:
        build_config(raw, PluginManager().registry)
    assert info.value.path == path


def test_codec_round_trips_addresses() -> None:
    for host in (parse_host("192.0.2.1"), parse_host("2001:db8::1"), "example.com"):
        raw = codec.udp_packet(host, 53, b"payload")
        assert codec.parse_udp(raw) == (host, 53, b"payload")
        # Any prefix of a reply is "need more bytes", never an error.
        reply = b"\x05\x00\x00" + codec.encode_address(host, 1080)
        for cut in range(len(reply)):
            assert codec.parse_reply(reply[:cut]) is None
        assert codec.parse_reply(reply) == ((0, host, 1080), len(reply))
    with pytest.raises(codec.SocksError):
        codec.parse_reply(b"\x04\x5a\x00\x00")
