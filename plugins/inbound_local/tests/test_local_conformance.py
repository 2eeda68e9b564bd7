"""Every listening inbound passes tunray.testing's check_inbound, through a real client on loopback."""

from __future__ import annotations

from typing import Any

import pytest
from tunray.net.address import Destination, Network, parse_host
from tunray.testing.conformance import check_inbound
from tunray.testing.proxyclients import DirectClient, HttpConnectClient, Socks4Client, Socks5Client, free_port

pytestmark = pytest.mark.timeout(60)


def _inbound(protocol: str, port: int, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"protocol": protocol, "listen": "127.0.0.1", "port": port, "settings": settings or {}}


async def test_socks5_noauth_with_udp() -> None:
    port = free_port()
    await check_inbound(_inbound("socks", port, {"udp": True}), Socks5Client("127.0.0.1", port))


async def test_socks5_password_sets_the_email() -> None:
    port = free_port()
    settings = {"auth": "password", "accounts": [{"user": "alice", "pass": "s3cret"}], "udp": True}
    await check_inbound(_inbound("socks", port, settings), Socks5Client("127.0.0.1", port, "alice", "s3cret"), email="alice")


async def test_socks4_and_4a() -> None:
    port = free_port()
    await check_inbound(_inbound("socks", port), Socks4Client("127.0.0.1", port))


async def test_mixed_speaks_http_connect_on_the_socks_port() -> None:
    port = free_port()
    await check_inbound(_inbound("mixed", port), HttpConnectClient("127.0.0.1", port))


async def test_http_connect_with_accounts() -> None:
    port = free_port()
    settings = {"accounts": [{"user": "bob", "pass": "pw"}]}
    await check_inbound(_inbound("http", port, settings), HttpConnectClient("127.0.0.1", port, "bob", "pw"), email="bob")


async def test_dokodemo_door_fixed_destination() -> None:
    port = free_port()
    settings = {"address": "10.9.0.1", "port": 80, "network": "tcp"}
    fixed = Destination(Network.TCP, parse_host("10.9.0.1"), 80)
    await check_inbound(_inbound("dokodemo-door", port, settings), DirectClient("127.0.0.1", port), fixed_destination=fixed)
