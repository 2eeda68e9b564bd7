"""The built-in plugin: blackhole, the router and the dispatcher.

Registered like any external plugin, but first, so an external plugin's
``tunray_make_router``/``tunray_make_dispatcher`` results win.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunray.plugin import hookimpl

if TYPE_CHECKING:
    from tunray.config.model import Config
    from tunray.dispatcher import Dispatcher
    from tunray.plugin.registry import Registry
    from tunray.routing.router import Router
    from tunray.runtime import Runtime


@hookimpl
def tunray_register_types(registry: Registry) -> None:
    from tunray.outbounds.blackhole import BlackholeOutbound

    registry.add_outbound(BlackholeOutbound)


@hookimpl
def tunray_add_config_sections(registry: Registry) -> None:
    from tunray import privileges

    registry.add_section(privileges.SECTION, privileges.SCHEMA)


@hookimpl(trylast=True)
def tunray_make_router(config: Config, runtime: Runtime) -> Router:
    router: Router = config.router
    return router


@hookimpl(trylast=True)
def tunray_make_dispatcher(runtime: Runtime) -> Dispatcher:
    from tunray.dispatcher import Dispatcher

    return Dispatcher(runtime)
