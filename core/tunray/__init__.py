"""tunray: a plugin-based proxy framework modelled on Xray-core.

The public surface for plugin authors is small: :data:`hookimpl` (the pluggy marker),
the contracts in :mod:`tunray.inbound`, :mod:`tunray.outbound`, :mod:`tunray.stack`,
:mod:`tunray.link`, and the schema helpers in :mod:`tunray.config.schema`.
"""

from __future__ import annotations

from tunray.plugin import hookimpl

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]
