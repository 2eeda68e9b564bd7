"""The ``freedom`` outbound (Xray ``proxy/freedom``): connect directly.

TCP: resolve per ``domainStrategy``, dial with ``streamSettings.sockopt`` applied
before connect, accept the app's handshake only once connected (so a lazy stack
answers a failed dial with RST), then relay with the level's timeouts.
UDP: full-cone, see :mod:`tunray_freedom.udp`.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from tunray.config.errors import ConfigError
from tunray.config.schema import Enum, Field, Int, Schema, Settings, Str, Unsupported
from tunray.link import ByteLink, PacketLink
from tunray.net.address import Destination, parse_host
from tunray.net.hostfence import HostFence
from tunray.net.sockopt import DOMAIN_STRATEGIES
from tunray.net.stream import open_stream
from tunray.outbound import Outbound
from tunray.relay import relay
from tunray.session import FlowContext

from tunray_freedom.udp import relay_udp


def _check(s: Settings, path: str) -> None:
    if s.redirect:
        try:
            _parse_redirect(s.redirect)
        except ValueError as exc:
            raise ConfigError(f"{path}.redirect", f"{exc} (expected host:port)") from None


def _parse_redirect(text: str) -> tuple[Any, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"bad redirect {text!r}")
    host = host.strip("[]")
    return (parse_host(host) if host and host not in ("0.0.0.0", "::") else None), int(port)


class FreedomOutbound(Outbound):
    protocol = "freedom"
    settings_schema = Schema(
        Field("domainStrategy", Enum(*DOMAIN_STRATEGIES), default="AsIs", doc="how to resolve domain targets"),
        Field("targetStrategy", Enum(*DOMAIN_STRATEGIES), default=None, doc="newer name; wins over domainStrategy"),
        Field("redirect", Str(), default="", doc='send every flow to "host:port" (empty host or port keeps it)'),
        Field("userLevel", Int(min=0), default=0, doc="policy level for timeouts"),
        Unsupported("fragment", "freedom.fragment"),
        Unsupported("noises", "freedom.noises"),
        Unsupported("noise", "freedom.noise"),
        Unsupported("proxyProtocol", "freedom.proxyProtocol"),
        Unsupported("finalRules", "freedom.finalRules"),
        Unsupported("ipsBlocked", "freedom.ipsBlocked"),
        check=_check,
    )

    def __init__(self, config: Any, runtime: Any) -> None:
        super().__init__(config, runtime)
        s = self.settings
        self.strategy: str = s.targetStrategy or config.target_strategy or s.domainStrategy
        stream = config.stream
        self.sockopt: Settings | None = stream.settings.sockopt if stream is not None else None
        if self.strategy == "AsIs" and self.sockopt is not None and self.sockopt.domainStrategy != "AsIs":
            self.strategy = self.sockopt.domainStrategy
        self.redirect = _parse_redirect(s.redirect) if s.redirect else None

    def _target(self, dest: Destination) -> Destination:
        if self.redirect is None:
            return dest
        host, port = self.redirect
        if host is not None:
            dest = dest.with_host(host)
        if port:
            dest = dest.with_port(port)
        return dest

    def _fence(self, ctx: FlowContext) -> HostFence | None:
        """The flow's host fence; a ``redirect`` naming a host is the operator's explicit choice."""
        fence: HostFence | None = ctx.host_fence
        if fence is None or self.redirect is None or self.redirect[0] is None:
            return fence
        host = self.redirect[0]
        if isinstance(host, str):
            return fence  # a redirect to a domain: its addresses are checked as they resolve
        return fence.with_allowed((ipaddress.ip_network(host),))

    async def process(self, ctx: FlowContext, link: ByteLink | PacketLink) -> None:
        policy = self.runtime.policy(self.settings.userLevel or ctx.user.level)
        dialer = self.runtime.dialer
        if isinstance(link, PacketLink):
            await relay_udp(
                link,
                self._target(ctx.target),
                dialer,
                policy,
                strategy=self.strategy,
                rewrite=self._target,
                opts=self.sockopt,
                send_through=self.config.send_through,
                fence=self._fence(ctx),
            )
            return
        target = self._target(ctx.target)
        sock = await dialer.connect_tcp(
            target,
            opts=self.sockopt,
            strategy=self.strategy,
            send_through=self.config.send_through,
            timeout=policy.handshake,
            fence=self._fence(ctx),
        )
        stream = await open_stream(sock, high_water=policy.buffer_size)
        try:
            await link.accept()
            await relay(link, stream, policy, ctx)
        except BaseException:
            stream.abort()
            raise
        await stream.aclose()
