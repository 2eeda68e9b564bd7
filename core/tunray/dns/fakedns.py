"""FakeDNS (Xray's ``fakedns`` section): hand out addresses from a reserved range, remember the name.

Theory of operation
-------------------
A :class:`FakePool` owns one CIDR and at most ``size`` live names.  ``address_for``
returns the name's address if it has one (refreshing its recency), else takes the
next free address: a cursor that starts at a point derived from the clock (as Xray's
scan does, so a restart does not hand the same addresses to different names straight
away) and walks forward, wrapping, past addresses that are still bound.  Xray restarts
the scan from the clock on every allocation, which probes through every address
allocated in the same millisecond; the cursor makes an allocation O(1) in practice.  When the pool is full the
least recently used name is forgotten first, so one address is never bound to two
live names: the map ``name -> address`` and its inverse are kept in step.

``domain_for(ip)`` is the reverse lookup used by sniffing; an address in the range
that no name holds any more returns ``None`` (the dispatcher refuses such a flow).

Xray's rules (app/dns/fakedns/fake.go, infra/conf/fakedns.go): ``poolSize`` must be
smaller than the number of addresses in ``ipPool``; the section is one object
``{ipPool, poolSize}`` or an array of them; with a ``"fakedns"`` server and no
section, the defaults are ``198.18.0.0/15`` and ``fc00::/18`` (32768 each, or one
of them with 65535 when ``queryStrategy`` keeps a single family).  The name server
answers with TTL 1.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from typing import Any

from tunray.config.errors import ConfigError, join
from tunray.net.address import IPAddress

DEFAULT_V4 = "198.18.0.0/15"
DEFAULT_V6 = "fc00::/18"
#: TTL of a fake answer (Xray: 1 second).
FAKE_TTL = 1

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class FakePool:
    __slots__ = ("_by_ip", "_by_name", "_cursor", "_first", "_span", "network", "size")

    def __init__(self, cidr: str, size: int) -> None:
        self.network: Network = ipaddress.ip_network(cidr, strict=False)
        rooms = self.network.max_prefixlen - self.network.prefixlen
        if size <= 0:
            raise ValueError("poolSize must be positive")
        if math.log2(size) >= rooms:
            raise ValueError(f"poolSize {size} is not smaller than the {2**rooms} addresses of {cidr}")
        self.size = size
        self._first = int(self.network.network_address)
        self._span = self.network.num_addresses
        self._by_name: OrderedDict[str, IPAddress] = OrderedDict()
        self._by_ip: dict[IPAddress, str] = {}
        self._cursor = int(time.time() * 1000) % self._span

    @property
    def version(self) -> int:
        return self.network.version

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, ip: object) -> bool:
        return isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)) and ip in self.network

    def address_for(self, name: str) -> IPAddress:
        ip = self._by_name.get(name)
        if ip is not None:
            self._by_name.move_to_end(name)
            return ip
        if len(self._by_name) >= self.size:
            _old_name, old_ip = self._by_name.popitem(last=False)
            del self._by_ip[old_ip]
        offset = self._cursor
        while True:
            ip = ipaddress.ip_address(self._first + offset)
            offset = (offset + 1) % self._span
            if ip not in self._by_ip:
                break
        self._cursor = offset
        self._by_name[name] = ip
        self._by_ip[ip] = name
        return ip

    def domain_for(self, ip: IPAddress) -> str | None:
        name = self._by_ip.get(ip)
        if name is not None:
            self._by_name.move_to_end(name)
        return name


class FakeDNS:
    """All configured pools (Xray's ``HolderMulti``)."""

    __slots__ = ("pools",)

    def __init__(self, pools: list[FakePool]) -> None:
        self.pools = pools

    def addresses(self, name: str, want4: bool = True, want6: bool = True) -> list[IPAddress]:
        name = name.lower().rstrip(".")
        return [
            p.address_for(name)
            for p in self.pools
            if (p.version == 4 and want4) or (p.version == 6 and want6)
        ]

    def in_pool(self, ip: IPAddress | None) -> bool:
        return ip is not None and any(ip in p for p in self.pools)

    def domain_for(self, ip: IPAddress | None) -> str | None:
        if ip is None:
            return None
        for p in self.pools:
            if ip in p:
                return p.domain_for(ip)
        return None

    def __len__(self) -> int:
        return sum(len(p) for p in self.pools)

    @classmethod
    def from_config(cls, raw: Any, path: str) -> FakeDNS:
        items = raw if isinstance(raw, list) else [raw]
        if not items:
            raise ConfigError(path, "expected {ipPool, poolSize} or an array of them")
        pools = []
        for i, item in enumerate(items):
            p = join(path, i) if isinstance(raw, list) else path
            if not isinstance(item, dict):
                raise ConfigError(p, "expected an object {ipPool, poolSize}")
            fields = {str(k).lower(): (k, v) for k, v in item.items()}
            pkey, cidr = fields.get("ippool", ("ipPool", None))
            skey, size = fields.get("poolsize", ("poolSize", None))
            if not isinstance(cidr, str) or not cidr:
                raise ConfigError(join(p, pkey), "expected a CIDR such as 198.18.0.0/15")
            if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
                raise ConfigError(join(p, skey), "expected a positive number of names")
            try:
                pools.append(FakePool(cidr, size))
            except ValueError as exc:
                raise ConfigError(join(p, pkey), str(exc)) from None
        return cls(pools)

    @classmethod
    def default(cls, want4: bool, want6: bool) -> FakeDNS:
        """Xray's pools when a ``"fakedns"`` server is configured without a section."""
        if want4 and want6:
            return cls([FakePool(DEFAULT_V4, 32768), FakePool(DEFAULT_V6, 32768)])
        return cls([FakePool(DEFAULT_V4 if want4 else DEFAULT_V6, 65535)])


def restore_fake_domain(ctx: Any, sniffing: Any, resolver: Any) -> None:
    """Sniffing's ``fakedns`` step: a flow to a fake address goes to its name instead.

    As in Xray (app/dispatcher/default.go, fakednssniffer.go): the name comes from the
    pool, and wins over a name the content sniffers found (TLS SNI, HTTP Host); if the
    pool no longer knows the address, a domain found by the content
    sniffers (TLS SNI, HTTP Host, QUIC) is used instead; ``routeOnly`` does not apply
    to fake addresses (the outbound must get the name, the address means nothing
    upstream).  Where Xray would then pass the fake address on unchanged, tunray
    refuses the flow (TCP reset, UDP dropped): dialing a fake address can only fail or
    loop back into the TUN.  Raises ``FlowDropped`` for that.
    """
    fake: FakeDNS | None = getattr(resolver, "fakedns", None)
    original = ctx.original_target or ctx.target
    if fake is None or not fake.in_pool(original.ip):
        return
    from tunray.dispatcher import FlowDropped

    domain = fake.domain_for(original.ip)
    if domain is not None:
        excluded = sniffing.domains_excluded
        if excluded is not None and excluded.match(domain):
            domain = None
    elif ctx.sniffed_domain and ctx.protocol != "bittorrent":
        domain = ctx.sniffed_domain
    if not domain:
        raise FlowDropped(f"{original.ip} is a FakeDNS address that no name holds now")
    if not ctx.protocol:
        ctx.protocol = "fakedns"
    ctx.sniffed_domain = domain
    ctx.target = original.with_host(domain)
    ctx.route_target = None
