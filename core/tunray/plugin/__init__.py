"""tunray's plugin system, built on pluggy.

Quick start for a plugin distribution::

    # pyproject.toml
    [project.entry-points.tunray]
    socks = "tunray_socks.plugin"

    # tunray_socks/plugin.py
    from tunray import hookimpl
    @hookimpl
    def tunray_register_types(registry):
        registry.add_outbound(SocksOutbound)
"""

from __future__ import annotations

import pluggy

PROJECT = "tunray"

hookimpl = pluggy.HookimplMarker(PROJECT)
_hookspec = pluggy.HookspecMarker(PROJECT)

__all__ = ["PROJECT", "hookimpl"]
