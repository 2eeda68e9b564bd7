"""tunray's REALITY security layer: ``"streamSettings": {"security": "reality", "realitySettings": {...}}``.

Quick start::

    [project.entry-points.tunray]
    security_reality = "tunray_reality.plugin"

Registers ``security:reality``; the stream it returns (:class:`tunray_reality.stream.RealityStream`)
offers ``tls_version``, ``read_record`` and ``detach_raw`` like ``security:tls``, so XTLS Vision works over it.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
