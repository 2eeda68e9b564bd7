"""The addresses the NAT unit tests share: an app, a far server, the TUN's two NAT addresses."""

from __future__ import annotations

import ipaddress

from tunray_stack_system.nat import Side

TCP = 6
SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08
APP4, FAR4, TUN4, NEXT4 = (ipaddress.ip_address(a).packed for a in ("10.9.0.1", "198.51.100.7", "10.9.0.1", "10.9.0.2"))
APP6, FAR6, TUN6, NEXT6 = (ipaddress.ip_address(a).packed for a in ("fd09::1", "2001:db8::7", "fd09::1", "fd09::2"))
LPORT = 40404
SIDES = {4: Side(TUN4, NEXT4, LPORT), 6: Side(TUN6, NEXT6, LPORT)}


def ends(version: int) -> tuple[bytes, bytes, bytes, bytes]:
    """(app, far, tun, next) of the family."""
    return (APP4, FAR4, TUN4, NEXT4) if version == 4 else (APP6, FAR6, TUN6, NEXT6)
