"""Per-flow context: what Xray keeps in ``session.Inbound``/``Outbound``/``Content``.

One :class:`FlowContext` is made by the inbound for each flow and travels through
the dispatcher, the router and the outbound.  It is a plain slotted object: it is
created once per flow, so it is cheap, and it is the only thing observers see.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from tunray.net.address import Destination

_ids = itertools.count(1)


@dataclass(slots=True)
class User:
    level: int = 0
    email: str = ""


@dataclass(slots=True)
class FlowContext:
    """Everything known about one flow.

    ``target`` is where the outbound connects; ``route_target`` is what routing sees
    (they differ when sniffing runs with ``routeOnly``).
    """

    inbound_tag: str
    inbound_protocol: str
    source: Destination
    target: Destination
    user: User = field(default_factory=User)
    id: int = field(default_factory=lambda: next(_ids))
    started: float = field(default_factory=time.monotonic)
    original_target: Destination | None = None
    route_target: Destination | None = None
    sniffed_domain: str = ""
    protocol: str = ""
    outbound_tag: str = ""
    detour: str = ""
    uplink_bytes: int = 0
    downlink_bytes: int = 0
    error: BaseException | None = None
    #: The inbound's compiled sniffing settings (``tunray.sniffing.SniffConfig``) or None.
    sniffing: Any = None
    #: ``tunray.net.hostfence.HostFence`` when the flow may not reach the host's own
    #: addresses (a TUN inbound with ``hostAccess: "rules"``); None: unfenced.
    host_fence: Any = None

    def __post_init__(self) -> None:
        if self.original_target is None:
            self.original_target = self.target

    @property
    def routing_target(self) -> Destination:
        return self.route_target or self.target

    def __str__(self) -> str:
        return f"[{self.id}] {self.source} -> {self.target}"
