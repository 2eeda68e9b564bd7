"""The ``tun`` inbound: a TUN device, a stack on it, one dispatcher call per flow.

Start order (Xray's, adapted): open the TUN (or adopt ``XRAY_TUN_FD``) so its index
is known; install the uplink binder (so the uplink is detected before our own routes
exist and every outbound socket is bound before any flow); configure the link (MTU,
addresses, up, routes); build the stack and attach it; start the accept loop.  Each
flow runs on a task the dispatcher owns (``dispatcher.spawn``).

``stop_accepting`` ends the accept loop while the stack keeps carrying running flows
(the runtime drains them); ``stop`` undoes the rest in reverse and is idempotent:
stack (resetting whatever is still open), binder, routes and addresses, device, link,
netlink worker.  A failed ``start`` cleans up whatever it had done before raising.

An adopted fd (``XRAY_TUN_FD``/``TUNRAY_TUN_FD``) belongs to whoever passed it: the link,
its addresses and routes are not touched, and the fd is not closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TYPE_CHECKING, Any, ClassVar

from loguru import logger
from tunray.config.errors import join
from tunray.config.schema import Schema, Settings
from tunray.device import FdDevice
from tunray.inbound import Inbound
from tunray.net.hostfence import STRICT
from tunray.net.tun import TunError, adopt_tun, open_tun
from tunray.stack import Stack, StackOptions

from tunray_tun import netconf, settings
from tunray_tun.uplink import UplinkBinder

if TYPE_CHECKING:
    from tunray.config.model import InboundConfig
    from tunray.plugin.registry import Registry
    from tunray.runtime import Runtime

FD_ENV = ("XRAY_TUN_FD", "TUNRAY_TUN_FD", "xray.tun.fd")


def inherited_fd() -> int | None:
    """The TUN fd handed over through the environment, if any."""
    for key in FD_ENV:
        value = os.environ.get(key)
        if value:
            try:
                return int(value)
            except ValueError:
                raise TunError(0, f"{key}={value!r} is not a file descriptor number") from None
    return None


class TunInbound(Inbound):
    protocol = "tun"
    needs_listen = False
    settings_schema: ClassVar[Schema] = settings.schema()

    @classmethod
    def validate_config(cls, s: Settings, path: str, registry: Registry, stream: Any = None) -> None:
        """``stack`` must name an installed stack, ``stackSettings`` fit its schema, and
        ``handshake``/``offload`` ask only for what the stack's capabilities declare."""
        settings.parse_stack_settings(registry.stacks, s, path)
        if inherited_fd() is None:
            settings.stack_class(registry.stacks, s.stack, join(path, "stack")).check_link(
                list(s.gateway), join(path, "gateway"))

    def __init__(self, config: InboundConfig, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        s = self.settings
        path = join(config.path, "settings")
        self.stack_cls: type[Stack] = settings.stack_class(
            runtime.registry.stacks, s.stack, join(path, "stack")
        )
        self.stack_settings = settings.parse_stack_settings(runtime.registry.stacks, s, path)
        self.user_level = s.userLevel
        self.host_fence = STRICT if s.hostAccess == "rules" else None
        self.uplink_mode = settings.uplink_mode(s)
        if s.dns:
            logger.warning(
                "tun: settings.dns only applies on Windows; point the system resolver at it yourself"
            )
        self.ifname = s.name
        self.mtu = settings.effective_mtu(self.stack_cls, s)
        self.device: FdDevice | None = None
        self.stack: Stack | None = None
        self.adopted = False
        self._created = False
        self._setup: netconf.LinkSetup | None = None
        self._worker: netconf.NetlinkWorker | None = None
        self._binder: UplinkBinder | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._flows: set[asyncio.Task[None]] = set()  # counted for stats; the dispatcher owns them
        self._queues: list[FdDevice] = []  # supervisor: one per worker (prepare_workers)
        self._queue: tuple[int, int] | None = None  # in a worker: (index, count)
        self._link_index: int | None = None  # in a worker: the link's index (the supervisor's lookup)
        self._state = "new"  # new -> started -> stopped
        self.failed = False  # the device vanished: stop() leaves the (gone) link alone

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._state != "new":
            raise RuntimeError("a TUN inbound starts once")
        self._state = "started"
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        s = self.settings
        fd = inherited_fd()
        if self._queue is not None:
            # A worker: the supervisor configured the link and knows its index, so a worker starts
            # no netlink thread (with its pyroute2 loop and malloc arena) unless "auto" uplink
            # detection needs one.
            self.device = self._queues[self._queue[0]]
            self.adopted = True
            if self.uplink_mode:
                worker = self._worker = netconf.NetlinkWorker() if self.uplink_mode == "auto" else None
                self._binder = UplinkBinder(self.uplink_mode, self.runtime.dialer, worker, self._link_index)
                await self._binder.start()
            await self._start_stack()
            return
        self._worker = worker = netconf.NetlinkWorker()
        if fd is not None:
            self.device, self.ifname = adopt_tun(fd, expect_name=s.name, mtu=self.mtu)
            self.adopted = True
            if s.gateway or s.autoSystemRoutingTable:
                logger.warning(
                    "tun: {} was handed over by fd; gateway and routes are left to its owner", self.ifname
                )
        else:
            existed = bool(s.name) and await worker.call(netconf.link_index, s.name) is not None
            offload = settings.effective_offload(self.stack_cls, s)
            self.device, self.ifname = open_tun(s.name or "tun%d", offload=offload, mtu=self.mtu)
            self._created = not existed
        index = await worker.call(netconf.link_index, self.ifname)
        if self.uplink_mode:
            self._binder = UplinkBinder(self.uplink_mode, self.runtime.dialer, worker, index)
            await self._binder.start()
        if not self.adopted:
            if index is None:
                raise TunError(0, f"TUN {self.ifname} vanished right after it was opened")
            self._setup = netconf.LinkSetup(index)
            await worker.call(self._setup.apply, self.mtu, list(s.gateway), list(s.autoSystemRoutingTable))
        await self._start_stack()

    async def _start_stack(self) -> None:
        s = self.settings
        assert self.device is not None
        policy = self.runtime.policy(self.user_level)
        options = StackOptions(
            mtu=self.mtu,
            handshake=settings.effective_handshake(self.stack_cls, s),
            tcp_idle_timeout=policy.conn_idle,
            udp_idle_timeout=float(s.udpTimeout),
            handshake_timeout=policy.handshake,
            max_flows=s.maxFlows,
            max_half_open=s.maxHalfOpen,
            udp_queue_packets=s.udpQueuePackets,
            max_half_open_per_source=s.maxHalfOpenPerSource,
            tcp_buffer=s.tcpBufferSize * 1024,
            max_buffered_bytes=s.maxBufferedBytes // (self._queue[1] if self._queue else 1),
            settings=self.stack_settings,
            stacks=self.runtime.registry.stacks,
            queue=self._queue,
        )
        self.stack = self.stack_cls(options)
        await self.stack.attach(self.device)
        self._accept_task = asyncio.get_running_loop().create_task(self._accept_loop(self.stack))
        logger.info("{} up", self.ifname)

    # --- worker processes ---------------------------------------------------------------------

    def prepare_workers(self) -> int:
        """Open one TUN queue per worker, steer by source endpoint, configure the link (no loop yet)."""
        s = self.settings
        count = settings.worker_count(s)
        if inherited_fd() is not None:
            if count > 1 and s.workers is not None:
                logger.warning("tun: a TUN handed over by fd has one queue: running one worker")
            return 1
        if count <= 1:
            return 1
        from tunray.net import steering

        offload = settings.effective_offload(self.stack_cls, s)
        try:
            with netconf.sync_ipr() as ipr:
                existed = bool(s.name) and netconf.link_index(ipr, s.name) is not None
            first, self.ifname = open_tun(s.name or "tun%d", offload=offload, mtu=self.mtu, multi_queue=True)
            self._queues = [first]
            self._created = not existed
            for _ in range(count - 1):
                self._queues.append(open_tun(self.ifname, offload=offload, mtu=self.mtu, multi_queue=True)[0])
            try:
                prog = steering.load()
                try:
                    steering.attach(first.fileno(), prog)
                finally:
                    os.close(prog)
            except OSError as exc:  # without it one app socket's datagrams would spread over workers
                raise TunError(exc.errno or 0, f"tun: cannot steer {self.ifname}'s queues by source ({exc}); "
                                               "set settings.workers to 1") from None
            with netconf.sync_ipr() as ipr:
                index = netconf.link_index(ipr, self.ifname)
                if index is None:
                    raise TunError(0, f"TUN {self.ifname} vanished right after it was opened")
                self._setup = netconf.LinkSetup(index)
                self._setup.apply(ipr, self.mtu, list(s.gateway), list(s.autoSystemRoutingTable))
        except BaseException:
            self.leave_workers()
            raise
        logger.info("{} up with {} queues", self.ifname, count)
        return count

    def enter_worker(self, index: int, count: int) -> bool:
        if not self._queues:
            return index == 0  # no queues of our own: one instance, in worker 0
        for i, q in enumerate(self._queues):
            if i != index:
                q.close()  # this worker's copies only: the supervisor keeps every queue
        self._queue = (index, count)
        self._link_index = self._setup.index if self._setup is not None else None
        self._setup = None  # the link is the supervisor's
        self._created = False
        return True

    def leave_workers(self) -> None:
        setup, self._setup = self._setup, None
        for q in self._queues:
            q.close()
        self._queues = []
        if setup is None:
            return
        try:
            with netconf.sync_ipr() as ipr:
                setup.undo(ipr)
                if self._created:
                    netconf.delete_link(ipr, setup.index)
                else:
                    netconf.set_down(ipr, setup.index)
        except Exception as exc:
            logger.error("tun: while releasing {}: {}", self.ifname, exc)

    async def _accept_loop(self, stack: Stack) -> None:
        dispatcher = self.runtime.dispatcher
        try:
            async for flow in stack:
                task = dispatcher.spawn(self.new_context(flow.source, flow.destination), flow.destination, flow.link)
                self._flows.add(task)
                task.add_done_callback(self._flows.discard)
        except Exception as exc:  # a broken stack: log it, keep the process (other inbounds) alive
            logger.opt(exception=exc).error(
                "tun {}: stack {!r} failed: {}", self.ifname, self.stack_cls.name, exc
            )
            self.runtime.inbound_failed(self)
            return
        if stack.failure is not None:  # the device vanished or broke: fatal for this inbound
            self.failed = True
            logger.error("tun {}: the device vanished or failed ({}); stopping this inbound", self.ifname,
                         stack.failure.strerror or stack.failure)
            self.runtime.inbound_failed(self)

    async def stop_accepting(self) -> None:
        if self.stack is not None:
            self.stack.stop_accepting()
        if self._accept_task is not None:
            self._accept_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept_task
            self._accept_task = None

    async def stop(self) -> None:
        if self._state == "stopped":
            return
        self._state = "stopped"
        errors: list[BaseException] = []
        await self.stop_accepting()
        if self.stack is not None:
            await self._collect(errors, self.stack.aclose())
        if self._binder is not None:
            await self._collect(errors, self._binder.stop())
        worker = self._worker
        if self.failed and worker is not None and self._setup is not None:
            try:
                gone = await worker.call(netconf.link_index, self.ifname) != self._setup.index
            except Exception:
                gone = True
            if gone:
                self._setup = None  # routes and addresses went with the link
        if worker is not None and self._setup is not None:
            await self._collect(errors, worker.call(self._setup.undo))
        if self.device is not None:
            self.device.close()
        if worker is not None and self._created and self._setup is not None:
            await self._collect(errors, worker.call(netconf.delete_link, self._setup.index))
        elif worker is not None and self._setup is not None:
            await self._collect(errors, worker.call(netconf.set_down, self._setup.index))
        if worker is not None:
            await self._collect(errors, worker.aclose())
        if errors:
            raise errors[0]

    @staticmethod
    async def _collect(errors: list[BaseException], awaitable: Any) -> None:
        try:
            await awaitable
        except Exception as exc:
            logger.error("tun: while stopping: {}", exc)
            errors.append(exc)

    def capabilities(self) -> set[str]:
        """CAP_NET_ADMIN to remove its routes, addresses and link at shutdown (none for an adopted fd)."""
        return set() if self.adopted else {"CAP_NET_ADMIN"}

    def privileged_threads(self) -> list[Any]:
        """The netlink worker does that removal, so it keeps the capability too."""
        worker = self._worker
        if worker is None or self.adopted:
            return []

        async def run(fn: Any) -> None:
            await worker.call(lambda _ipr: fn())

        return [run]

    @property
    def uplink(self) -> str | None:
        """The interface outbound sockets are bound to now (None: unbound)."""
        return self._binder.current if self._binder is not None else None

    def stats(self) -> dict[str, Any]:
        """The stack's counters plus the number of open flows."""
        out = self.stack.stats() if self.stack is not None else {}
        out["flows_open"] = len(self._flows)
        if self.stack is not None:  # the limits this stack runs with (in a worker: its share)
            o = self.stack.options
            out["limits"] = {"maxFlows": o.max_flows, "maxHalfOpen": o.max_half_open,
                             "maxHalfOpenPerSource": o.max_half_open_per_source,
                             "maxBufferedBytes": o.max_buffered_bytes, "tcpBufferSize": o.tcp_buffer,
                             "udpQueuePackets": o.udp_queue_packets}
        return out
