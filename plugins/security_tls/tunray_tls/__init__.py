"""tunray's TLS security layer: ``"streamSettings": {"security": "tls", "tlsSettings": {...}}``.

Quick start::

    [project.entry-points.tunray]
    security_tls = "tunray_tls.plugin"

Registers ``security:tls``; the stream it returns (:class:`tunray_tls.stream.TlsStream`)
exposes ``tls_version``, ``read_record`` and ``detach_raw`` for XTLS Vision.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
