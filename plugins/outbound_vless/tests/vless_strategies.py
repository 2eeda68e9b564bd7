"""Hypothesis strategies shared by the VLESS codec tests (not a test module)."""

from __future__ import annotations

import ipaddress

from hypothesis import settings
from hypothesis import strategies as st
from tunray.net.address import Destination, Host, Network

# No example database on disk: these tests leave no files behind.
FAST = settings(database=None, deadline=None, max_examples=200)

DOMAIN_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_"


def _not_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return True
    return False


domains = st.text(DOMAIN_ALPHABET, min_size=1, max_size=255).filter(_not_ip)
ipv4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
# IPv4-mapped IPv6 decodes as IPv4 (as in Xray), so keep it out of identity round trips.
ipv6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1)).filter(lambda a: a.ipv4_mapped is None)
hosts: st.SearchStrategy[Host] = st.one_of(domains, ipv4, ipv6)
ports = st.integers(0, 65535)


def destinations(network: Network) -> st.SearchStrategy[Destination]:
    return st.builds(Destination, st.just(network), hosts, ports)
