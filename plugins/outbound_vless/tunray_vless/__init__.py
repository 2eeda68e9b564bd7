"""VLESS outbound for tunray (Xray's ``vless`` protocol, with XTLS Vision and XUDP).

Quick start::

    # pyproject.toml of this distribution
    [project.entry-points.tunray]
    outbound_vless = "tunray_vless.plugin"

The wire formats live in :mod:`tunray_vless.codec` and are sans-IO: no sockets, no
asyncio, no clock.  Feed bytes in, take bytes and events out.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
