"""The dispatcher's side of sniffing: read a little, ask the sniffers, decide the override.

Per inbound, :class:`SniffConfig` is compiled once from Xray's ``sniffing`` object.
Per TCP flow, :func:`sniff_stream` reads from the app for at most 200 ms (Xray's
budget) and at most 32767 bytes, re-running the sniffers on the growing prefix until
one answers, every one has ruled the bytes out, or time runs out; the bytes read are replayed to
the outbound through :class:`~tunray.link.PrefixedByteLink`.  Sniffing needs the
app's first bytes, so a lazily-handshaking stack is accepted before sniffing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunray.config.errors import join
from tunray.config.schema import Settings
from tunray.link import ByteLink, Packet, PacketLink
from tunray.net.address import Destination
from tunray.sniff import TCP_SNIFFERS, NeedMoreData, NoClue, QuicSniffer, SniffResult

BUDGET = 0.2
MAX_SNIFF = 32767


@dataclass(frozen=True, slots=True)
class SniffConfig:
    dest_override: tuple[str, ...]
    route_only: bool
    metadata_only: bool
    domains_excluded: Any  # DomainMatcher | None
    ips_excluded: Any  # IPMatcher | None
    tcp: tuple[Callable[[bytes], SniffResult], ...]

    @classmethod
    def compile(cls, s: Settings, path: str) -> SniffConfig | None:
        if not s.enabled:
            return None
        from tunray.routing.domain import DomainMatcher
        from tunray.routing.geodata import GeoAssets
        from tunray.routing.ip import IPMatcher

        assets = GeoAssets()
        domains = (
            DomainMatcher.compile(s.domainsExcluded, join(path, "domainsExcluded"), assets=assets)
            if s.domainsExcluded
            else None
        )
        ips = IPMatcher.compile(s.ipsExcluded, join(path, "ipsExcluded"), assets=assets) if s.ipsExcluded else None
        # Xray sniffs every protocol it knows and overrides only for destOverride ones;
        # the protocol name still feeds routing's ``protocol`` field.
        tcp = tuple(TCP_SNIFFERS.values())
        return cls(tuple(s.destOverride), s.routeOnly, s.metadataOnly, domains, ips, tcp)

    def should_override(self, result: SniffResult, target: Destination) -> bool:
        if not result.domain:
            return False
        if self.domains_excluded is not None and self.domains_excluded.match(result.domain.lower()):
            return False
        if self.ips_excluded is not None and target.ip is not None and self.ips_excluded.match(target.ip):
            return False
        proto = result.protocol
        return any(proto.startswith(p) or p.startswith(proto) for p in self.dest_override)


async def sniff_stream(link: ByteLink, cfg: SniffConfig) -> tuple[SniffResult | None, bytes]:
    """Sniff the start of a TCP flow; return the result (or None) and the bytes consumed.

    As in Xray, a sniffer that rules the bytes out (:class:`NoClue`) is dropped for the
    rest of the flow, and sniffing ends at once when none is left: only a sniffer that
    still needs more bytes (:class:`NeedMoreData`, e.g. a partial ClientHello) makes
    it wait for the next read, within the 200 ms budget.  An SSH or database client that
    speaks first is therefore relayed without waiting.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BUDGET
    buf = b""
    sniffers = cfg.tcp
    while sniffers and len(buf) < MAX_SNIFF:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            async with asyncio.timeout(remaining):
                chunk = await link.read(MAX_SNIFF - len(buf))
        except TimeoutError:
            break
        if not chunk:
            break
        buf += chunk
        pending: list[Callable[[bytes], SniffResult]] = []
        for sniffer in sniffers:
            try:
                return sniffer(buf), buf
            except NeedMoreData:
                pending.append(sniffer)
            except NoClue:
                continue
        sniffers = tuple(pending)
    return None, buf


async def sniff_packets(link: PacketLink) -> tuple[SniffResult | None, list[Packet]]:
    """Sniff a UDP flow's first datagrams (a QUIC ClientHello may span several).

    Returns the result and every datagram read, to be replayed in order.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BUDGET
    sniffer = QuicSniffer()
    packets: list[Packet] = []
    while len(packets) < 16:
        remaining = deadline - loop.time()
        if remaining <= 0 and packets:
            break
        try:
            async with asyncio.timeout(max(remaining, 0.0) if packets else None):
                packet = await link.recv()
        except TimeoutError:
            break
        if packet is None:
            break
        packets.append(packet)
        try:
            return sniffer.feed(packet.data), packets
        except NeedMoreData:
            continue
        except NoClue:
            break
    return None, packets
