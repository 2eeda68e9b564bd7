"""The plugin manager facade: the only place core code touches pluggy.

Loading follows pytest's conventions: every entry point in the ``tunray`` group is
loaded unless ``TUNRAY_DISABLE_PLUGIN_AUTOLOAD`` is set; ``TUNRAY_BLOCK_PLUGINS=a,b``
blocks entry points (or distributions) by name.  Built-ins (blackhole, the router,
the dispatcher) are registered as one more plugin, ``tunray.builtin``, loaded first so
that external plugins' ``firstresult`` hooks win over them.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

from tunray.plugin import PROJECT, spec
from tunray.plugin.registry import PluginError, Registry

if TYPE_CHECKING:
    from tunray.config.model import Config
    from tunray.dispatcher import Dispatcher
    from tunray.routing.router import Router
    from tunray.runtime import Runtime
    from tunray.session import FlowContext

AUTOLOAD_ENV = "TUNRAY_DISABLE_PLUGIN_AUTOLOAD"
BLOCK_ENV = "TUNRAY_BLOCK_PLUGINS"


@dataclass(frozen=True)
class PluginInfo:
    name: str
    distribution: str
    version: str
    module: str


def _blocked() -> set[str]:
    return {n.strip().lower() for n in os.environ.get(BLOCK_ENV, "").split(",") if n.strip()}


class PluginManager:
    """Loads plugins, fills the :class:`Registry`, and calls hooks through typed methods."""

    def __init__(self, *, autoload: bool | None = None, extra: Iterable[Any] = ()) -> None:
        self._pm = pluggy.PluginManager(PROJECT)
        self._pm.add_hookspecs(spec)
        self.infos: list[PluginInfo] = []
        from tunray import __version__, builtin

        self._register(builtin, "tunray.builtin", PluginInfo("builtin", "tunray", __version__, builtin.__name__))
        if autoload is None:
            autoload = not os.environ.get(AUTOLOAD_ENV)
        if autoload:
            self._load_entry_points()
        for i, plugin in enumerate(extra):
            name = getattr(plugin, "__name__", f"extra-{i}")
            self._register(plugin, name, PluginInfo(name, "(in process)", "", name))
        try:
            self._pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {self._describe(exc.plugin)} is broken: {exc}") from None
        self.registry = self._build_registry()
        self._has_flow_observers = any(
            self._pm.hook.__dict__[h].get_hookimpls()
            for h in ("tunray_flow_opened", "tunray_flow_routed", "tunray_flow_closed")
        )

    # --- loading -------------------------------------------------------------------------

    def _load_entry_points(self) -> None:
        blocked = _blocked()
        for ep in importlib.metadata.entry_points(group=PROJECT):
            dist = ep.dist.name if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else "?"
            if ep.name.lower() in blocked or dist.lower() in blocked:
                self._pm.set_blocked(ep.name)
                continue
            if self._pm.get_plugin(ep.name) is not None or self._pm.is_blocked(ep.name):
                continue
            try:
                module = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"plugin {ep.name!r} from distribution {dist} {version} failed to import: "
                    f"{type(exc).__name__}: {exc}"
                ) from None
            self._register(module, ep.name, PluginInfo(ep.name, dist, version, ep.value))

    def _register(self, plugin: Any, name: str, info: PluginInfo) -> None:
        try:
            self._pm.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise PluginError(f"plugin {name!r} from distribution {info.distribution} is broken: {exc}") from None
        self.infos.append(info)

    def _describe(self, plugin: Any) -> str:
        name = self._pm.get_name(plugin) or repr(plugin)
        for info in self.infos:
            if info.name == name:
                return f"{name!r} from distribution {info.distribution} {info.version}".rstrip()
        return repr(name)

    def _build_registry(self) -> Registry:
        registry = Registry()
        for hook_name in ("tunray_register_types", "tunray_add_config_sections"):
            caller = getattr(self._pm.hook, hook_name)
            # Call each implementation on its own so the registry knows whose entry it is.
            for impl in caller.get_hookimpls():  # registration order: built-ins first
                registry.current_owner = self._describe(impl.plugin)
                try:
                    impl.function(registry=registry)
                except PluginError:
                    raise
                except Exception as exc:
                    raise PluginError(
                        f"plugin {registry.current_owner} failed in {hook_name}: {type(exc).__name__}: {exc}"
                    ) from None
        registry.current_owner = "?"
        return registry

    # --- typed hook facade ---------------------------------------------------------------

    def configure(self, config: Config) -> None:
        self._pm.hook.tunray_configure(config=config)

    def make_router(self, config: Config, runtime: Runtime) -> Router:
        router = self._pm.hook.tunray_make_router(config=config, runtime=runtime)
        assert router is not None, "the built-in plugin always provides a router"
        return router  # type: ignore[no-any-return]

    def make_dispatcher(self, runtime: Runtime) -> Dispatcher:
        dispatcher = self._pm.hook.tunray_make_dispatcher(runtime=runtime)
        assert dispatcher is not None, "the built-in plugin always provides a dispatcher"
        return dispatcher  # type: ignore[no-any-return]

    def startup(self, runtime: Runtime) -> None:
        self._pm.hook.tunray_startup(runtime=runtime)

    def shutdown(self, runtime: Runtime) -> None:
        self._pm.hook.tunray_shutdown(runtime=runtime)

    @property
    def observes_flows(self) -> bool:
        """False when no plugin implements a flow hook: the dispatcher then skips the calls."""
        return self._has_flow_observers

    def flow_opened(self, ctx: FlowContext) -> None:
        self._pm.hook.tunray_flow_opened(ctx=ctx)

    def flow_routed(self, ctx: FlowContext, outbound_tag: str) -> None:
        self._pm.hook.tunray_flow_routed(ctx=ctx, outbound_tag=outbound_tag)

    def flow_closed(self, ctx: FlowContext, error: BaseException | None) -> None:
        self._pm.hook.tunray_flow_closed(ctx=ctx, error=error)

    def hook_names(self) -> list[str]:
        return spec.all_hook_names()
