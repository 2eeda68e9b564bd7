"""The driver inbound: a test injects flows as if an app had opened them.

Register the plugin module with the runtime (``PluginManager(extra=[driver])``, or use
:func:`tunray.testing.harness.running`), configure an inbound with
``"protocol": "driver"``, then::

    app, task = driver.open_tcp("tcp:10.0.0.2:5000", "tcp:10.200.0.2:7000")
    await app.send(b"hi"); assert await app.recv_exactly(2) == b"hi"

Each flow is a real ``dispatch_link`` call on a task the dispatcher owns (the task is
returned so a test can await the flow's end); once the runtime is shutting down,
``open_*`` raise ``RuntimeError``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tunray import hookimpl
from tunray.config.schema import Bool, Field, Schema
from tunray.inbound import Inbound
from tunray.link import ByteLink
from tunray.net.address import Destination, Network
from tunray.testing.links import AppEnd, PacketAppEnd, byte_link_pair, packet_link_pair


def _dest(value: str | Destination, network: Network) -> Destination:
    if isinstance(value, Destination):
        return value
    if value.startswith(("tcp:", "udp:")):
        net, _, rest = value.partition(":")
        return Destination.parse(rest, Network(net))
    return Destination.parse(value, network)


class DriverInbound(Inbound):
    protocol = "driver"
    needs_listen = False
    settings_schema = Schema(Field("lazy", Bool(), default=True, doc="links start unaccepted, as a lazy stack's"))

    def __init__(self, config: Any, runtime: Any) -> None:
        super().__init__(config, runtime)
        self.accepting = True

    async def start(self) -> None:
        pass

    async def stop_accepting(self) -> None:
        self.accepting = False

    async def stop(self) -> None:
        self.accepting = False

    def _spawn(self, source: Destination, target: Destination, link: Any) -> asyncio.Task[None]:
        if not self.accepting:
            raise RuntimeError(f"driver inbound {self.tag!r} is not accepting flows (shutting down)")
        return self.runtime.dispatcher.spawn(self.new_context(source, target), target, link)

    def open_tcp(
        self, source: str | Destination, target: str | Destination, high_water: int = 256 * 1024
    ) -> tuple[AppEnd, asyncio.Task[None]]:
        link, app = byte_link_pair(high_water, lazy=self.settings.lazy)
        return app, self._spawn(_dest(source, Network.TCP), _dest(target, Network.TCP), link)

    def open_link(self, source: str | Destination, target: str | Destination, link: Any) -> asyncio.Task[None]:
        """Dispatch a flow over a link the test built (e.g. a :class:`~tunray.net.applink.SocketByteLink`)."""
        network = Network.TCP if isinstance(link, ByteLink) else Network.UDP
        return self._spawn(_dest(source, network), _dest(target, network), link)

    def open_udp(
        self, source: str | Destination, first_target: str | Destination
    ) -> tuple[PacketAppEnd, asyncio.Task[None]]:
        link, app = packet_link_pair()
        return app, self._spawn(_dest(source, Network.UDP), _dest(first_target, Network.UDP), link)


@hookimpl
def tunray_register_types(registry: Any) -> None:
    registry.add_inbound(DriverInbound)
