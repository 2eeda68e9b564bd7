"""The runtime: one running instance built from a validated config (Xray's ``core.Instance``).

Build order: validate the config (:func:`tunray.config.model.build_config`), then
construct every outbound and inbound (constructors open nothing), then ``start``:
outbounds first, then inbounds.  ``stop`` reverses it as aiohttp's runner does:
inbounds stop accepting, open flows get ``drain_timeout`` seconds (then the
dispatcher, their one owner, cancels and resets the rest), inbounds release their
devices, then outbounds close; every error is collected and logged, none stops the
rest of the shutdown.

``reload`` (SIGHUP) swaps in a new, already validated config: new outbounds are started,
then routing, outbounds, DNS and policies are replaced at once, so every flow dispatched
afterwards uses the new ones, while flows already running keep the outbound objects they
hold; the old outbounds and resolver are closed once those flows have ended.  Inbounds
are not rebuilt: a reload whose ``inbounds`` differ from the running ones is refused
(:class:`ConfigError`, nothing changes), so a TUN keeps its device, routes and flows.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

from loguru import logger

from tunray.config.errors import ConfigError
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
        if self.resolver is not None:
            self.resolver.bind(self)  # queries not marked +local go through routing, as in Xray
        self.outbounds: dict[str, Outbound] = {}
        self.outbound_list: list[Outbound] = []
        self.default_outbound_tag = ""
        self._set_outbounds(config, self._build_outbounds(config))
        self.inbounds: list[Inbound] = [ib.cls(ib, self) for ib in config.inbounds]
        self._started = False
        self._retiring: set[asyncio.Task[None]] = set()
        #: Inbounds that stopped on their own (a TUN deleted under them).
        self.failed_inbounds: list[Inbound] = []
        #: Set when every inbound has failed: ``tunray run`` then exits non-zero, so a supervisor restarts it.
        self.no_inbound_left = asyncio.Event()
        self._failing: set[asyncio.Task[None]] = set()
        #: How many reloads were applied (``tunray`` stats: ``runtime>>>reloads``).
        self.reloads = 0

    def snapshot(self) -> dict[str, Any]:
        """Every counter and gauge, for ``SIGUSR1`` (and tests): inbound stacks (flows, drops,
        limits hit), traffic counters, reloads, failed inbounds."""
        inbounds: dict[str, Any] = {}
        for i, ib in enumerate(self.inbounds):
            stats = getattr(ib, "stats", None)
            inbounds[ib.tag or f"inbounds[{i}]"] = stats() if callable(stats) else {}
        return {
            "inbounds": inbounds,
            "traffic": dict(self.stats),
            "flows_running": len(self.dispatcher.active),
            "reloads": self.reloads,
            "failed_inbounds": [ib.tag for ib in self.failed_inbounds],
        }

    def inbound_failed(self, inbound: Inbound) -> None:
        """An inbound lost its device for good: release it; signal when none is left."""
        if inbound in self.failed_inbounds:
            return
        self.failed_inbounds.append(inbound)

        async def release() -> None:
            try:
                await inbound.stop_accepting()
                await inbound.stop()
            except Exception as exc:
                logger.error("stopping failed inbound {!r}: {}", inbound.tag, exc)
            if self.inbounds and len(self.failed_inbounds) == len(self.inbounds):
                logger.error("no inbound left; exiting")
                self.no_inbound_left.set()

        task = asyncio.get_running_loop().create_task(release())
        self._failing.add(task)
        task.add_done_callback(self._failing.discard)

    def _build_outbounds(self, config: Config) -> list[Outbound]:
        return [ob_cfg.cls(ob_cfg, self) for ob_cfg in config.outbounds]

    def _set_outbounds(self, config: Config, outbounds: list[Outbound]) -> None:
        table: dict[str, Outbound] = {}
        for ob_cfg, ob in zip(config.outbounds, outbounds, strict=True):
            if ob_cfg.tag:
                table[ob_cfg.tag] = ob
        # Xray: no rule matched => the first outbound in the config.
        default = config.outbounds[0].tag if config.outbounds else ""
        if outbounds and not default:
            table[""] = outbounds[0]
        self.outbounds, self.outbound_list, self.default_outbound_tag = table, outbounds, default

    async def reload(self, config: Config) -> None:
        """Switch new flows to *config*'s routing, outbounds, DNS and policies (see module doc).

        Raises :class:`ConfigError` (and changes nothing) if the inbounds differ, and
        whatever a new outbound's ``start`` raises (the new outbounds are closed again).
        """
        old_in, new_in = self.config.raw.get("inbounds") or [], config.raw.get("inbounds") or []
        if old_in != new_in:
            pairs = enumerate(zip(old_in, new_in, strict=False))
            index = next((i for i, (a, b) in pairs if a != b), min(len(old_in), len(new_in)))
            raise ConfigError(
                f"inbounds[{index}]", "inbounds changed; a reload does not rebuild inbounds: restart tunray to apply it"
            )
        fresh = self._build_outbounds(config)
        started: list[Outbound] = []
        try:
            for ob in fresh:
                await ob.start()
                started.append(ob)
        except BaseException:
            for ob in started:
                await self._close_outbound(ob, [])
            raise
        router = self.plugins.make_router(config, self)
        running = set(self.dispatcher.active)
        retired, old_resolver = self.outbound_list, self.resolver
        # one synchronous swap: a flow dispatched from here on sees only the new config
        self.config = config
        self.router = router
        self._set_outbounds(config, fresh)
        self.resolver = self.dialer.resolver = config.resolver
        self._policies = {}
        self.reloads += 1
        task = asyncio.get_running_loop().create_task(self._retire(running, retired, old_resolver))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, running: set[asyncio.Task[None]], outbounds: list[Outbound], resolver: Any) -> None:
        """Close the previous config's outbounds and resolver once the flows that use them ended."""
        if running:
            await asyncio.wait(running)
        errors: list[BaseException] = []
        for ob in outbounds:
            await self._close_outbound(ob, errors)
        if resolver is not None and resolver is not self.resolver:
            try:
                await resolver.aclose()
            except Exception as exc:
                logger.error("closing the previous DNS resolver: {}", exc)

    @staticmethod
    async def _close_outbound(ob: Outbound, errors: list[BaseException]) -> None:
        try:
            await ob.aclose()
        except Exception as exc:
            errors.append(exc)
            logger.error("closing outbound {!r}: {}", ob.tag, exc)

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
        """The first step of :meth:`stop`: the dispatcher and every inbound refuse new flows, and
        the resolver's kept connections (DoH) end before the drain."""
        errors: list[BaseException] = []
        self.dispatcher.stop_accepting()
        for ib in reversed(self.inbounds):
            try:
                await ib.stop_accepting()
            except Exception as exc:
                errors.append(exc)
                logger.error("inbound {!r} stopping accepting: {}", ib.tag, exc)
        if self.resolver is not None:  # kept DoH connections are flows too: end them before draining
            try:
                await self.resolver.aclose()
            except Exception as exc:
                errors.append(exc)
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
        for task in list(self._retiring):  # the drain ended their flows: retire now
            await task
        for ob in self.outbound_list:
            await self._close_outbound(ob, errors)
        if self.resolver is not None:
            try:
                await self.resolver.aclose()
            except Exception as exc:
                errors.append(exc)
        if self._owns_access_log:
            self.access_log.close()
        self._started = False
        return errors
