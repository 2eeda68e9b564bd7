"""``streamSettings.sockopt``: socket options for outbound connections.

Applied before ``connect`` so that ``mark`` (SO_MARK) and ``interface``
(SO_BINDTODEVICE) steer the very first packet, which is what keeps an outbound's own
traffic out of a TUN that carries the default route.
"""

from __future__ import annotations

import socket
from typing import Any

from tunray.config.schema import Bool, Enum, Field, Int, OneOf, Schema, Settings, Str, Unsupported

SO_MARK = getattr(socket, "SO_MARK", 36)
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
TCP_FASTOPEN_CONNECT = getattr(socket, "TCP_FASTOPEN_CONNECT", 30)
TCP_CONGESTION = getattr(socket, "TCP_CONGESTION", 13)
TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)

DOMAIN_STRATEGIES = (
    "AsIs",
    "UseIP",
    "UseIPv4",
    "UseIPv6",
    "UseIPv4v6",
    "UseIPv6v4",
    "ForceIP",
    "ForceIPv4",
    "ForceIPv6",
    "ForceIPv4v6",
    "ForceIPv6v4",
)

SOCKOPT_SCHEMA = Schema(
    Field("mark", Int(min=0, max=0xFFFFFFFF), default=0, doc="SO_MARK on every outbound socket"),
    Field("interface", Str(), default="", doc="SO_BINDTODEVICE: leave through this interface"),
    Field("tcpFastOpen", OneOf((Bool(), Int())), default=False, doc="TCP Fast Open on connect"),
    Field("tcpKeepAliveIdle", Int(min=-1), default=0, doc="seconds before keep-alive probes (0 = system)"),
    Field("tcpKeepAliveInterval", Int(min=-1), default=0, doc="seconds between keep-alive probes"),
    Field("tcpUserTimeout", Int(min=0), default=0, doc="TCP_USER_TIMEOUT in ms"),
    Field("tcpCongestion", Str(), default="", doc="congestion control algorithm, e.g. bbr"),
    Field("tcpNoDelay", Bool(), default=False, doc="TCP_NODELAY (tunray always sets it)"),
    Field("domainStrategy", Enum(*DOMAIN_STRATEGIES), default="AsIs", doc="resolve domains before dialing"),
    Field("tproxy", Enum("off", "redirect", "tproxy"), default="off"),
    Unsupported("dialerProxy", "sockopt.dialerProxy (chaining)"),
    Unsupported("tcpMptcp", "sockopt.tcpMptcp"),
    Unsupported("happyEyeballs", "sockopt.happyEyeballs"),
    Unsupported("customSockopt", "sockopt.customSockopt"),
    Unsupported("acceptProxyProtocol", "sockopt.acceptProxyProtocol"),
    Unsupported("tcpWindowClamp", "sockopt.tcpWindowClamp"),
    Unsupported("tcpMaxSeg", "sockopt.tcpMaxSeg"),
    Unsupported("addressPortStrategy", "sockopt.addressPortStrategy"),
    Unsupported("V6Only", "sockopt.V6Only"),
    Unsupported("interfaceIndex", "sockopt.interfaceIndex"),
)

DEFAULT_SOCKOPT = SOCKOPT_SCHEMA.parse({}, "")


def apply(sock: socket.socket, opts: Settings | None, *, tcp: bool) -> None:
    """Set the options in *opts* on *sock*.  Raises ``OSError`` if the kernel refuses."""
    if opts is None:
        return
    if opts.mark:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, opts.mark)
    if opts.interface:
        bind_to_device(sock, opts.interface)
    if not tcp:
        return
    tfo: Any = opts.tcpFastOpen
    if tfo is True or (isinstance(tfo, int) and not isinstance(tfo, bool) and tfo > 0):
        sock.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1)
    if opts.tcpKeepAliveIdle > 0 or opts.tcpKeepAliveInterval > 0:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if opts.tcpKeepAliveIdle > 0:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, opts.tcpKeepAliveIdle)
        if opts.tcpKeepAliveInterval > 0:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, opts.tcpKeepAliveInterval)
    if opts.tcpUserTimeout:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT, opts.tcpUserTimeout)
    if opts.tcpCongestion:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, opts.tcpCongestion.encode())


def bind_to_device(sock: socket.socket, interface: str) -> None:
    sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, interface.encode() + b"\0")
