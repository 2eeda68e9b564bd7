"""The inbound contract.

An inbound accepts flows from somewhere (a TUN device, a listening socket, a test
driver) and, for each, awaits ``runtime.dispatcher.dispatch_link(ctx, destination,
link)``, which returns when the flow is over; ``dispatcher.spawn`` runs that call on
a task the dispatcher owns, which is how an inbound normally starts a flow.

Shutdown (``Runtime.stop``) is in three steps: ``stop_accepting`` on every inbound
(stop taking new flows, keep carrying the running ones), the dispatcher's drain (flows
get the drain timeout to finish, then are cancelled and reset), then ``stop`` (release
devices and sockets; idempotent).  ``start`` opens the inbound's resources and returns.
Errors in one flow never reach ``start``/``stop`` or other flows: the dispatcher logs them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from tunray.config.errors import join
from tunray.config.schema import EMPTY, Schema, Settings
from tunray.net.address import Destination
from tunray.net.hostfence import HostFence
from tunray.session import FlowContext, User
from tunray.sniffing import SniffConfig

if TYPE_CHECKING:
    from tunray.config.model import InboundConfig, StreamConfig
    from tunray.plugin.registry import Registry
    from tunray.privileges import ThreadRunner
    from tunray.runtime import Runtime


class Inbound(ABC):
    protocol: ClassVar[str]
    settings_schema: ClassVar[Schema] = EMPTY
    #: Xray's ``port``/``listen`` are required unless the inbound ignores them (TUN does).
    needs_listen: ClassVar[bool] = True

    @classmethod
    def validate_config(
        cls, settings: Settings, path: str, registry: Registry, stream: StreamConfig | None = None
    ) -> None:
        """Checks that need the registry (other plugins' names); raise ConfigError.

        Called by config validation after ``settings_schema`` parsed *settings* and the
        ``streamSettings`` (*stream*, or None) were parsed; *path* is the JSON path of the
        ``settings`` object.  Default: nothing to check.
        """

    def __init__(self, config: InboundConfig, runtime: Runtime) -> None:
        self.config = config
        self.tag = config.tag
        self.settings: Settings = config.settings
        self.runtime = runtime
        self.sniffing = SniffConfig.compile(config.sniffing, join(config.path, "sniffing"))
        self.user_level = 0
        #: Set by inbounds whose apps are untrusted (TUN): their flows may not be dialled
        #: to the host's own addresses (see :mod:`tunray.net.hostfence`).
        self.host_fence: HostFence | None = None

    def new_context(self, source: Destination, target: Destination) -> FlowContext:
        """A fresh per-flow context carrying this inbound's tag, sniffing and user level."""
        return FlowContext(
            inbound_tag=self.tag,
            inbound_protocol=self.protocol,
            source=source,
            target=target,
            user=User(level=self.user_level),
            sniffing=self.sniffing,
            host_fence=self.host_fence,
        )

    # --- worker processes (tunray.workers); called only by ``tunray run``, never in-process ---

    def prepare_workers(self) -> int:
        """How many worker processes this inbound wants; called once, before any event loop.

        1 (the default) means none.  An inbound that wants more opens here what the
        supervisor must hold for all workers (the TUN's queues, the link and its routes).
        """
        return 1

    def enter_worker(self, index: int, count: int) -> bool:
        """Called in worker *index* of *count* right after the fork; False: not run in this worker.

        Default: an inbound without workers of its own runs in worker 0 only (a listening
        port is bound once).
        """
        return index == 0

    def leave_workers(self) -> None:
        """In the supervisor once every worker is gone: release what :meth:`prepare_workers` took."""

    @abstractmethod
    async def start(self) -> None:
        """Open devices/sockets and begin accepting flows."""

    async def stop_accepting(self) -> None:
        """Stop taking new flows; running flows must keep working (they are being drained).

        Default: nothing (the dispatcher refuses new flows during shutdown anyway); an
        inbound with an accept loop stops it here.  Idempotent.
        """

    def capabilities(self) -> set[str]:
        """Linux capabilities (``"CAP_NET_ADMIN"``, ...) this inbound needs after ``start``.

        Asked once, when tunray drops root (``process.user``); default: none.
        """
        return set()

    def privileged_threads(self) -> list[ThreadRunner]:
        """Runners for threads of this inbound that use those capabilities (default: none).

        Each runner runs a function in its thread; the privilege drop keeps the
        capabilities there too (capabilities are per thread on Linux).
        """
        return []

    @abstractmethod
    async def stop(self) -> None:
        """Release devices and sockets; flows still running end with them.  Idempotent."""
