"""The host fence: flows from untrusted inbounds may not be dialled to the host itself.

An app behind a TUN is a LAN device, not a local user.  Without a fence, a ``freedom``
dial on its behalf reaches the host's own services: a sniffed ``Host: localhost:7777``,
an injected SYN to ``127.0.0.1`` or to the TUN's own gateway address, a name that
resolves to a loopback address.  A TUN inbound with ``hostAccess: "rules"`` (the
default) marks each flow with a :class:`HostFence`; the dialer checks every address it
is about to connect or send to (after name resolution and ``redirect``), so neither
sniffing nor DNS can route around it.

"The host" is what the kernel itself treats as local: the loopback and unspecified
ranges (``127.0.0.0/8``, ``::1``, ``0.0.0.0``, ``::``, and their IPv4-mapped forms) and
every address configured on any interface (including the TUN's own).  The latter is
asked of the kernel at dial time by binding a throw-away socket to the address, which
succeeds exactly for local addresses (``ip_nonlocal_bind`` would make every address
look local: then the fence refuses everything, failing closed, and says so).

The only way through is a routing rule whose ``ip`` list names the address with a
literal IP or CIDR (``"127.0.0.1/32"``, ``"10.7.0.1"``; ``geoip:private`` does not
count): the dispatcher copies that rule's literal networks into the flow's fence.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from tunray.net.address import IPAddress

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_V4_ANY = ipaddress.IPv4Address("0.0.0.0")
_V6_ANY = ipaddress.IPv6Address("::")


class HostAccessDenied(ConnectionRefusedError):
    """A fenced flow was about to be dialled to the host's own address."""


def unmap(ip: IPAddress) -> IPAddress:
    """``::ffff:a.b.c.d`` as ``a.b.c.d``; anything else unchanged."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_host_address(ip: IPAddress) -> bool:
    """True for loopback, unspecified and any address bound on one of the host's interfaces."""
    ip = unmap(ip)
    if ip.is_loopback or ip == _V4_ANY or ip == _V6_ANY:
        return True
    if ip.is_multicast or (isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address("255.255.255.255")):
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_link_local:
        return False  # a bind needs a scope id; link-local peers are on-link, not the host
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_DGRAM)
    try:
        probe.bind((str(ip), 0))
    except OSError:
        return False  # EADDRNOTAVAIL: not an address of this host
    finally:
        probe.close()
    return True


def literal_networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """The plain IP/CIDR entries of a routing rule's ``ip`` list (no ``geoip:``, no ``!``)."""
    nets: list[IPNetwork] = []
    for entry in entries:
        try:  # geoip:, ext: and negated entries are not IP literals and fail here
            nets.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            continue
    return tuple(nets)


@dataclass(frozen=True, slots=True)
class HostFence:
    """Per-flow: the host's own addresses are off limits except the networks in *allow*."""

    allow: tuple[IPNetwork, ...] = ()

    def check(self, ip: IPAddress, port: int) -> None:
        """Raise :class:`HostAccessDenied` if a fenced flow may not reach ``ip:port``."""
        ip = unmap(ip)
        for net in self.allow:
            if ip.version == net.version and ip in net:
                return
        if is_host_address(ip):
            raise HostAccessDenied(
                f"{ip}:{port} is this host's own address; flows from a TUN may not reach it "
                "(name it in a routing rule's ip list, or set the inbound's hostAccess to \"allow\")"
            )

    def with_allowed(self, nets: tuple[IPNetwork, ...]) -> HostFence:
        return HostFence(self.allow + nets) if nets else self


#: The fence of a flow with no routing exemptions.
STRICT = HostFence()
