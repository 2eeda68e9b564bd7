"""Every hook tunray calls, grouped by when it is called.

Hooks run at start-up, at shutdown, and at most once per flow; never per packet.
The data path uses the classes registered here through plain dict lookups.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunray.plugin import _hookspec

if TYPE_CHECKING:
    from tunray.config.model import Config
    from tunray.dispatcher import Dispatcher
    from tunray.plugin.registry import Registry
    from tunray.routing.router import Router
    from tunray.runtime import Runtime
    from tunray.session import FlowContext


# --- Registration: called once when the plugin manager is built -------------------------------


@_hookspec
def tunray_register_types(registry: Registry) -> None:
    """Register inbound, outbound, stack and transport classes by protocol name.

    Call ``registry.add_inbound(cls)``, ``add_outbound``, ``add_stack``,
    ``add_transport``.  A name registered twice is a start-up error naming both
    distributions, unless the later call passes ``replace=True``.
    """


@_hookspec
def tunray_add_config_sections(registry: Registry) -> None:
    """Declare extra top-level config sections: ``registry.add_section(key, schema)``.

    The section is validated with the rest of the config; its parsed
    :class:`~tunray.config.schema.Settings` is in ``config.extra[key]``.
    """


# --- Start-up and shutdown ---------------------------------------------------------------------


@_hookspec
def tunray_configure(config: Config) -> None:
    """Called after the whole config is validated, before anything is opened.

    Raise :class:`~tunray.config.ConfigError` to reject the config.
    """


@_hookspec(firstresult=True)
def tunray_make_router(config: Config, runtime: Runtime) -> Router | None:
    """Build the router.  The first non-``None`` result wins; the built-in one is last."""


@_hookspec(firstresult=True)
def tunray_make_dispatcher(runtime: Runtime) -> Dispatcher | None:
    """Build the dispatcher.  The first non-``None`` result wins; the built-in one is last."""


@_hookspec
def tunray_startup(runtime: Runtime) -> None:
    """Called after every outbound and inbound has started."""


@_hookspec
def tunray_shutdown(runtime: Runtime) -> None:
    """Called after inbounds stopped and flows drained, before outbounds close."""


# --- Per flow: each at most once per flow ---------------------------------------------------


@_hookspec
def tunray_flow_opened(ctx: FlowContext) -> None:
    """A flow entered the dispatcher (before sniffing and routing)."""


@_hookspec
def tunray_flow_routed(ctx: FlowContext, outbound_tag: str) -> None:
    """Routing chose ``outbound_tag`` for the flow (``""`` when the flow is dropped)."""


@_hookspec
def tunray_flow_closed(ctx: FlowContext, error: BaseException | None) -> None:
    """The flow is over; ``ctx`` carries byte counts; ``error`` is what ended it, if anything."""


def all_hook_names() -> list[str]:
    return sorted(name for name, obj in globals().items() if name.startswith("tunray_") and callable(obj))


_: Any = None
