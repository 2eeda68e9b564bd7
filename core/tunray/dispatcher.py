"""The dispatcher: one call per flow, from inbound to outbound.

``dispatch_link(ctx, destination, link)`` is the equivalent of Xray's synchronous
``DispatchLink``: it sniffs (if the inbound asked), routes, runs the outbound and
returns when the flow is over.  It never raises for a flow's own failure: errors
are logged with the flow's context and end that flow only.  It closes the link in
every case, with a reset when the app-side handshake never completed (so a lazy
stack answers RST to an unroutable or undialable SYN).

The dispatcher owns every flow task: inbounds start flows with :meth:`Dispatcher.spawn`
(or await ``dispatch_link`` on a task of their own, which is then registered for the
call's duration), and only the dispatcher cancels them: in :meth:`Dispatcher.drain` at
shutdown, and a spawned flow whose app withdrew its SYN before accept
(:meth:`~tunray.link.ByteLink.on_withdrawn`), so its dial stops.  Once :meth:`Dispatcher.stop_accepting` ran, new flows are reset at once.
A flow cut by cancellation is reset towards the app, never closed cleanly: the app
must not take a truncated stream for a complete one.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from loguru import logger

from tunray.dns.fakedns import restore_fake_domain
from tunray.link import ByteLink, Packet, PacketLink, PrefixedByteLink
from tunray.net.address import Destination, Network, parse_host
from tunray.sniffing import SniffConfig, sniff_packets, sniff_stream

if TYPE_CHECKING:
    from tunray.outbound import Outbound
    from tunray.runtime import Runtime
    from tunray.session import FlowContext


class FlowDropped(Exception):
    """Routing chose no usable outbound for the flow."""


class Dispatcher:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.active: set[asyncio.Task[None]] = set()
        #: False once shutdown began: new flows are refused (reset) instead of dispatched.
        self.accepting = True

    def spawn(self, ctx: FlowContext, destination: Destination, link: ByteLink | PacketLink) -> asyncio.Task[None]:
        """Run :meth:`dispatch_link` for one flow on a task the dispatcher owns."""
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._flow(ctx, destination, link))  # registered here, not again
        self.active.add(task)
        task.add_done_callback(self.active.discard)
        if isinstance(link, ByteLink):
            # an app that withdraws its SYN (reset, evicted under a SYN flood) before accept: stop the
            # dial.  call_soon: the task's first step is queued already, so its finally resets the link.
            def withdrawn() -> None:
                loop.call_soon(task.cancel)

            link.on_withdrawn(withdrawn)
        return task

    def stop_accepting(self) -> None:
        """Refuse every flow from now on (shutdown); flows already running go on."""
        self.accepting = False

    async def drain(self, timeout: float) -> int:
        """Wait up to *timeout* seconds for running flows to end, then cancel the rest.

        Returns how many flows had to be cancelled (each was reset towards its app).
        """
        active = list(self.active)
        if not active:
            return 0
        _, pending = await asyncio.wait(active, timeout=timeout)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=2.0)
            logger.warning("shutdown: {} flow(s) still open after {:g} s were reset", len(pending), timeout)
        return len(pending)

    async def dispatch_link(self, ctx: FlowContext, destination: Destination, link: ByteLink | PacketLink) -> None:
        """Run one flow on the caller's task (registered with the dispatcher for the call)."""
        task = asyncio.current_task()
        if task is not None:
            self.active.add(task)
        try:
            await self._flow(ctx, destination, link)
        finally:
            if task is not None:
                self.active.discard(task)

    async def _flow(self, ctx: FlowContext, destination: Destination, link: ByteLink | PacketLink) -> None:
        rt = self.runtime
        if not self.accepting:
            link.abort()
            return
        ctx.target = destination
        if ctx.original_target is None:
            ctx.original_target = destination
        observers = rt.plugins.observes_flows
        if observers:
            rt.plugins.flow_opened(ctx)
        error: BaseException | None = None
        try:
            sniffing: SniffConfig | None = getattr(ctx, "sniffing", None)
            if sniffing is not None and not sniffing.metadata_only:
                link = await self._sniff(ctx, sniffing, link)
            if sniffing is not None and "fakedns" in sniffing.dest_override:
                restore_fake_domain(ctx, sniffing, rt.resolver)
            outbound = await self._route(ctx)
            if observers:
                rt.plugins.flow_routed(ctx, ctx.outbound_tag)
            if outbound is None:
                raise FlowDropped(f"no outbound {ctx.outbound_tag!r}" if ctx.outbound_tag else "blocked")
            rt.access_log.write(ctx.source, "accepted", ctx.target, ctx.detour, email=ctx.user.email)
            await outbound.process(ctx, link)
        except asyncio.CancelledError as exc:
            error = exc
            raise
        except FlowDropped as exc:
            error = exc
            rt.access_log.write(ctx.source, "rejected", ctx.target, ctx.detour, str(exc))
            logger.info("{}: dropped: {}", ctx, exc)
        except Exception as exc:  # one flow's failure must not reach others
            error = exc
            logger.info("{}: {}: {}", ctx, type(exc).__name__, exc)
        finally:
            ctx.error = error
            if error is not None or (isinstance(link, ByteLink) and not link.accepted):
                link.abort()  # failed, cut by shutdown, or never accepted: a reset, not a clean end
            else:
                try:
                    await link.aclose()
                except Exception:
                    link.abort()
            if any(rt.stats_flags):
                rt.count_traffic(ctx)
            if observers:
                rt.plugins.flow_closed(ctx, error)

    async def _sniff(self, ctx: FlowContext, cfg: SniffConfig, link: ByteLink | PacketLink) -> ByteLink | PacketLink:
        if isinstance(link, ByteLink):
            await link.accept()
            result, prefix = await sniff_stream(link, cfg)
            if prefix:
                link = PrefixedByteLink(link, prefix)
        else:
            result, packets = await sniff_packets(link)
            if packets:
                link = _PrefixedPacketLink(link, packets)
        if result is not None:
            ctx.protocol = result.protocol
            ctx.sniffed_domain = result.domain
            if cfg.should_override(result, ctx.target):
                overridden = ctx.target.with_host(parse_host(result.domain))
                if cfg.route_only:
                    ctx.route_target = overridden
                else:
                    ctx.target = overridden
        return link

    async def _route(self, ctx: FlowContext) -> Outbound | None:
        rt = self.runtime
        route = await rt.router.pick_route(ctx)
        inbound = ctx.inbound_tag
        if route is None:
            tag = rt.default_outbound_tag
            ctx.detour = f"{inbound} >> {tag}" if inbound else tag
        else:
            tag = route.outbound_tag
            ctx.detour = f"{inbound} -> {tag}" if inbound else tag
        ctx.outbound_tag = tag
        if route is not None and route.host_nets and ctx.host_fence is not None:
            ctx.host_fence = ctx.host_fence.with_allowed(route.host_nets)
        outbound = rt.outbounds.get(tag)
        if outbound is None:
            return None
        network = ctx.target.network._value_  # (.value is a Python-level descriptor call)
        if network not in outbound.networks:
            raise FlowDropped(f"outbound {tag!r} ({outbound.protocol}) does not carry {network}")
        return outbound


class _PrefixedPacketLink(PacketLink):
    """Replays the datagrams read for sniffing, then reads on."""

    __slots__ = ("_inner", "_replay")

    def __init__(self, inner: PacketLink, replay: list[Packet]) -> None:
        self._inner = inner
        self._replay = replay[::-1]

    async def recv(self) -> Packet | None:
        if self._replay:
            return self._replay.pop()
        return await self._inner.recv()

    def send(self, data: bytes, source: Destination) -> None:
        self._inner.send(data, source)

    def abort(self) -> None:
        self._inner.abort()

    async def aclose(self) -> None:
        await self._inner.aclose()


__all__ = ["Dispatcher", "FlowDropped", "Network"]
