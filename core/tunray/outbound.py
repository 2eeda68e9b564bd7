"""The outbound contract.

``process(ctx, link)`` carries one flow to ``ctx.target`` and returns when the flow is
over (both directions finished, or an error).  For TCP it receives a
:class:`~tunray.link.ByteLink` and must call ``await link.accept()`` once its upstream
connection is established (lazy stacks answer the app's SYN only then); if the dial
fails it raises, and the dispatcher resets the app's connection.  For UDP it receives
a :class:`~tunray.link.PacketLink` whose packets each carry their own destination.

``process`` must not close the link; the dispatcher does.  It must honour
cancellation (the dispatcher cancels it on policy timeouts and shutdown) and release
every socket it opened in ``finally``.  ``aclose`` releases shared resources (pools,
mux sessions) and is idempotent.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from tunray.config.schema import EMPTY, Schema, Settings
from tunray.link import ByteLink, PacketLink
from tunray.session import FlowContext

if TYPE_CHECKING:
    from tunray.config.model import OutboundConfig, StreamConfig
    from tunray.plugin.registry import Registry
    from tunray.runtime import Runtime


class Outbound(ABC):
    protocol: ClassVar[str]
    settings_schema: ClassVar[Schema] = EMPTY
    #: Networks this outbound can carry; the dispatcher drops others with a log line.
    networks: ClassVar[frozenset[str]] = frozenset({"tcp", "udp"})

    @classmethod
    def validate_config(
        cls, settings: Settings, path: str, registry: Registry, stream: StreamConfig | None = None
    ) -> None:
        """Checks that need the registry; raise ConfigError.  See ``Inbound.validate_config``."""

    def __init__(self, config: OutboundConfig, runtime: Runtime) -> None:
        self.config = config
        self.tag = config.tag
        self.settings: Settings = config.settings
        self.runtime = runtime

    async def start(self) -> None:
        """Prepare shared resources.  Called once before any flow."""

    @abstractmethod
    async def process(self, ctx: FlowContext, link: ByteLink | PacketLink) -> None:
        """Carry one flow; see the module docstring."""

    async def aclose(self) -> None:
        """Release shared resources.  Idempotent."""
