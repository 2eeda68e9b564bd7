"""Entry point of ``tunray-outbound-vless`` (group ``tunray``, name ``outbound_vless``).

Phase 1 ships only the codecs; the ``vless`` outbound class is registered here once the
core's dialer exists.
"""

from __future__ import annotations

from tunray import hookimpl
from tunray.plugin.registry import Registry


@hookimpl
def tunray_register_types(registry: Registry) -> None:
    """Register nothing yet: the outbound class arrives with the core dialer."""
    del registry
