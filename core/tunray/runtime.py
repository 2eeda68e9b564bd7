"""The runtime: one running instance built from a validated config (Xray's ``core.Instance``).

Build order: validate the config (:func:`tunray.config.model.build_config`), then
construct every outbound and inbound (constructors open nothing), then ``start``:
outbounds first, then inbounds.  ``stop`` reverses it as aiohttp's runner does:
inbounds stop accepting, open flows get ``drain_timeout`` seconds (then the
dispatcher, their one owner, cancels and resets the rest), inbounds release their
devices, then outbounds close; every error is collected and logged, none stops the
rest of the shutdown.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from loguru import logger

from tunray.config.model import Config, build_config
from tunray.dispatcher import Dispatcher
from tunray.inbound import Inbound
from tunray.log import AccessLog
from tunray.net.dialer import Dialer
from tunray.outbound import Outbound
from tunray.plugin.manager import PluginManager
from tunray.policy import LevelPolicy
from tunray.session import FlowContext

#: Seconds running flows get to finish at shutdown (``tunray run -drain``); short enough
#: that SIGTERM leaves no TUN, route or process behind within 5 s.
DRAIN_TIMEOUT = 3.0


class Runtime:
    def __init__(self, config: Config, plugins: PluginManager, *, access_log: AccessLog | None = None) -> None:
        self.config = config
        self.plugins = plugins
        self.registry = plugins.registry
        self.resolver = config.resolver
        self.dialer = Dialer(self.resolver)
        self._owns_access_log = access_log is None
        self.access_log = access_log if access_log is not None else AccessLog.from_settings(config.log)
        #: Xray-named traffic counters (``inbound>>>TAG>>>traffic>>>uplink`` ...), kept when the
        #: config has a ``stats`` section and the matching ``policy.system`` flags are on.
        self.stats: MutableMapping[str, int] = {}
        system = config.policy.system
        self.stats_flags: tuple[bool, bool, bool, bool] = (
            (
                bool(system.statsInboundUplink),
                bool(system.statsInboundDownlink),
                bool(system.statsOutboundUplink),
                bool(system.statsOutboundDownlink),
            )
            if config.stats_enabled and system is not None
            else (False, False, False, False)
        )
        self._policies: dict[int, LevelPolicy] = {}
        self.router: Any = plugins.make_router(config, self)
        self.dispatcher: Dispatcher = plugins.make_dispatcher(self)
        self.outbounds: dict[str, Outbound] = {}
        self.outbound_list: list[Outbound] = []
        for ob_cfg in config.outbounds:
            ob = ob_cfg.cls(ob_cfg, self)
            self.outbound_list.append(ob)
            if ob_cfg.tag:
                self.outbounds[ob_cfg.tag] = ob
        # Xray: no rule matched => the first outbound in the config.
        self.default_outbound_tag = config.outbounds[0].tag if config.outbounds else ""
        if self.outbound_list and not self.default_outbound_tag:
            self.outbounds[""] = self.outbound_list[0]
        self.inbounds: list[Inbound] = [ib.cls(ib, self) for ib in config.inbounds]
        self._started = False

    @classmethod
    def from_raw(cls, raw: dict[str, Any], plugins: PluginManager | None = None, **kwargs: Any) -> Runtime:
        plugins = plugins or PluginManager()
        config = build_config(raw, plugins.registry)
        plugins.configure(config)
        return cls(config, plugins, **kwargs)

    def stat_keys(self) -> list[str]:
        """Every counter name :meth:`count_traffic` may use (tags x directions), for shared counters."""
        keys = []
        for kind, tags in (("inbound", [ib.tag for ib in self.config.inbounds]),
                           ("outbound", [ob.tag for ob in self.config.outbounds])):
            for tag in tags:
                if tag:
                    keys += [f"{kind}>>>{tag}>>>traffic>>>uplink", f"{kind}>>>{tag}>>>traffic>>>downlink"]
        return keys

    def count_traffic(self, ctx: FlowContext) -> None:
        """Add a finished flow's bytes to the enabled counters (once per flow)."""
        in_up, in_down, out_up, out_down = self.stats_flags
        s = self.stats
        for enabled, kind, tag, direction, n in (
            (in_up, "inbound", ctx.inbound_tag, "uplink", ctx.uplink_bytes),
            (in_down, "inbound", ctx.inbound_tag, "downlink", ctx.downlink_bytes),
            (out_up, "outbound", ctx.outbound_tag, "uplink", ctx.uplink_bytes),
            (out_down, "outbound", ctx.outbound_tag, "downlink", ctx.downlink_bytes),
        ):
            if enabled and tag:
                key = f"{kind}>>>{tag}>>>traffic>>>{direction}"
                s[key] = s.get(key, 0) + n

    def policy(self, level: int = 0) -> LevelPolicy:
        p = self._policies.get(level)
        if p is None:
            p = self._policies[level] = LevelPolicy.from_settings(self.config.level(level))
        return p

    async def start(self) -> None:
        try:
            for ob in self.outbound_list:
                await ob.start()
            for ib in self.inbounds:
                await ib.start()
        except BaseException:
            await self.stop()
            raise
        self._started = True
        self.plugins.startup(self)

    async def stop_accepting(self) -> list[BaseException]:
        """The first step of :meth:`stop`: the dispatcher and every inbound refuse new flows."""
        errors: list[BaseException] = []
        self.dispatcher.stop_accepting()
        for ib in reversed(self.inbounds):
            try:
                await ib.stop_accepting()
            except Exception as exc:
                errors.append(exc)
                logger.error("inbound {!r} stopping accepting: {}", ib.tag, exc)
        return errors

    async def stop(self, drain_timeout: float = DRAIN_TIMEOUT) -> list[BaseException]:
        errors = await self.stop_accepting()
        await self.dispatcher.drain(drain_timeout)
        for ib in reversed(self.inbounds):
            try:
                await ib.stop()
            except Exception as exc:
                errors.append(exc)
                logger.error("stopping inbound {!r}: {}", ib.tag, exc)
        if self._started:
            try:
                self.plugins.shutdown(self)
            except Exception as exc:
                errors.append(exc)
                logger.error("shutdown hook: {}", exc)
        for ob in self.outbound_list:
            try:
                await ob.aclose()
            except Exception as exc:
                errors.append(exc)
                logger.error("closing outbound {!r}: {}", ob.tag, exc)
        if self.resolver is not None:
            try:
                await self.resolver.aclose()
            except Exception as exc:
                errors.append(exc)
        if self._owns_access_log:
            self.access_log.close()
        self._started = False
        return errors
