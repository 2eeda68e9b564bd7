"""Destinations: where a flow goes, in the shape Xray's ``net.Destination`` has.

A destination is a network (TCP or UDP), a host and a port.  The host is either an
:class:`ipaddress.IPv4Address` / :class:`ipaddress.IPv6Address` or a domain string;
``Destination.parse`` turns ``"1.2.3.4:80"``, ``"[::1]:53"`` and ``"example.com:443"``
into one.  Destinations are frozen and hashable so they can key NAT tables.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Host = IPAddress | str


class Network(enum.Enum):
    TCP = "tcp"
    UDP = "udp"

    def __str__(self) -> str:
        return self.value


def parse_host(text: str) -> Host:
    """Return an IP address object if *text* is an IP literal, else the lower-cased domain."""
    stripped = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return ipaddress.ip_address(stripped)
    except ValueError:
        return text.lower().rstrip(".")


@dataclass(frozen=True, slots=True)
class Destination:
    network: Network
    host: Host
    port: int

    @classmethod
    def parse(cls, text: str, network: Network = Network.TCP) -> Destination:
        """Parse ``host:port``; IPv6 hosts must be bracketed.  Raises ``ValueError``."""
        if text.startswith("["):
            end = text.find("]")
            if end < 0 or text[end + 1 : end + 2] != ":":
                raise ValueError(f"bad address {text!r}: expected [ipv6]:port")
            host_text, port_text = text[: end + 1], text[end + 2 :]
        else:
            host_text, sep, port_text = text.rpartition(":")
            if not sep or ":" in host_text:
                raise ValueError(f"bad address {text!r}: expected host:port")
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise ValueError(f"bad port in {text!r}")
        return cls(network, parse_host(host_text), int(port_text))

    @property
    def is_ip(self) -> bool:
        return not isinstance(self.host, str)

    @property
    def is_domain(self) -> bool:
        return isinstance(self.host, str)

    @property
    def ip(self) -> IPAddress | None:
        return None if isinstance(self.host, str) else self.host

    @property
    def domain(self) -> str | None:
        return self.host if isinstance(self.host, str) else None

    def with_host(self, host: Host) -> Destination:
        return Destination(self.network, host, self.port)

    def with_port(self, port: int) -> Destination:
        return Destination(self.network, self.host, port)

    @property
    def host_text(self) -> str:
        return str(self.host)

    def sockaddr(self) -> tuple[str, int]:
        return (str(self.host), self.port)

    def __str__(self) -> str:
        """Xray's ``tcp:1.2.3.4:5`` / ``udp:[::1]:53`` / ``tcp:example.com:443`` form."""
        host = f"[{self.host}]" if isinstance(self.host, ipaddress.IPv6Address) else str(self.host)
        return f"{self.network.value}:{host}:{self.port}"

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if isinstance(self.host, ipaddress.IPv6Address) else str(self.host)
        return f"{host}:{self.port}"
