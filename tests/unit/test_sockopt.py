"""sockopt settings reach the socket (read back with getsockopt)."""

from __future__ import annotations

import socket

import pytest
from tunray.config.errors import ConfigError
from tunray.net import sockopt
from tunray.net.sockopt import SOCKOPT_SCHEMA


def _applied(raw: dict[str, object]) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sockopt.apply(sock, SOCKOPT_SCHEMA.parse(raw, "sockopt"), tcp=True)
    return sock


def test_keepalive_fast_open_user_timeout() -> None:
    with _applied({"tcpKeepAliveIdle": 30, "tcpKeepAliveInterval": 7, "tcpFastOpen": True, "tcpUserTimeout": 5000}) as s:
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 7
        assert s.getsockopt(socket.IPPROTO_TCP, sockopt.TCP_FASTOPEN_CONNECT) == 1
        assert s.getsockopt(socket.IPPROTO_TCP, sockopt.TCP_USER_TIMEOUT) == 5000


def test_defaults_touch_nothing() -> None:
    with _applied({}) as s:
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
        assert s.getsockopt(socket.IPPROTO_TCP, sockopt.TCP_FASTOPEN_CONNECT) == 0


@pytest.mark.root
def test_mark_and_interface() -> None:
    with _applied({"mark": 255, "interface": "lo"}) as s:
        assert s.getsockopt(socket.SOL_SOCKET, sockopt.SO_MARK) == 255
        assert s.getsockopt(socket.SOL_SOCKET, sockopt.SO_BINDTODEVICE, 16).rstrip(b"\0") == b"lo"


def test_congestion_control_name() -> None:
    with _applied({"tcpCongestion": "reno"}) as s:
        assert s.getsockopt(socket.IPPROTO_TCP, sockopt.TCP_CONGESTION, 16).rstrip(b"\0") == b"reno"


@pytest.mark.parametrize(
    ("raw", "path"),
    [({"mark": "x"}, "sockopt.mark"), ({"domainStrategy": "Sometimes"}, "sockopt.domainStrategy"), ({"happyEyeballs": {"x": 1}}, "sockopt.happyEyeballs")],
)
def test_bad_values_name_the_path(raw: dict[str, object], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        SOCKOPT_SCHEMA.parse(raw, "sockopt")
    assert info.value.path == path
