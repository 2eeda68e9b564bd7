"""Full-cone UDP for stack cores: one flow per app source endpoint, as Xray's TUN.

Every stack core (the Python stack, the lwIP glue) handles UDP with this one table:
every datagram from the app is queued on the flow of its *source* endpoint
with its own destination, so one app socket talking to many peers is one flow; replies
name their own source, which becomes the source address of the synthesised packet
(:func:`tunray.net.packet.build_udp`).  The queue is bounded (``queue_packets``) and
drops when full, as a network would, and so does a datagram the core's buffer budget
(:class:`~tunray.stackbudget.BufferBudget`, ``maxBufferedBytes``, shared with TCP) has no room
for (counted ``udp_buffer_budget_full``); a flow idle for ``idle_timeout`` seconds ends.  When
the core's flow limit is reached, a new source endpoint evicts the least recently used
UDP flow (the table is kept in use order) instead of being dropped.

:class:`UdpTable` implements the UDP half of :class:`~tunray.stackcore.StackCore`
(``udp_recv``/``udp_send``/``udp_close``, its events and timers); the owning core feeds
it the datagrams its IP parser found and shares its handle counter, event list and
output list with it.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from collections.abc import Callable

from tunray.net.packet import build_udp, parse_udp
from tunray.stackbudget import BufferBudget
from tunray.stackcore import CoreEvent, UdpClosed, UdpOpened, UdpReadable

INF = float("inf")


class UdpFlow:
    """One app source endpoint; ``queue`` holds ``(payload, dst_ip, dst_port)``."""

    __slots__ = ("handle", "held", "key", "last_active", "queue", "queued_bytes", "scheduled", "version",
                 "want_read")

    def __init__(self, key: tuple[bytes, int], version: int, now: float, handle: int) -> None:
        self.key = key
        self.version = version
        self.handle = handle
        self.held = True  # the driver has not called udp_close yet
        self.queue: deque[tuple[bytes, bytes, int]] = deque()
        self.queued_bytes = 0  # payload bytes in queue (counted against the budget)
        self.last_active = now
        self.scheduled = INF
        self.want_read = False


class UdpTable:
    """The UDP flows of one core; see the module docstring."""

    def __init__(self, *, mtu: int, vnet_hdr: bool, idle_timeout: float, queue_packets: int,
                 count: Callable[[str], None], events: Callable[[CoreEvent], None],
                 out: Callable[[bytes], None], new_handle: Callable[[], int | None],
                 budget: BufferBudget | None = None) -> None:
        self.mtu = mtu
        self.vnet_hdr = vnet_hdr
        self.idle_timeout = idle_timeout
        self.queue_packets = queue_packets
        self._count = count
        self._event = events
        self._out = out
        self._new_handle = new_handle  # None: the core's flow limit is reached
        self.budget = budget
        self.flows: OrderedDict[tuple[bytes, int], UdpFlow] = OrderedDict()  # least recently used first
        self.handles: dict[int, UdpFlow] = {}
        self._timers: list[tuple[float, int, UdpFlow]] = []

    def __len__(self) -> int:
        return len(self.flows)

    def input(self, version: int, src: bytes, dst: bytes, packet: bytes, l4: int, end: int, csum_ok: bool,
              now: float) -> None:
        """One datagram from the app (``packet[l4:end]`` is the UDP header and payload)."""
        parsed = parse_udp(version, src, dst, packet, l4, end, csum_ok)
        if isinstance(parsed, str):
            self._count(parsed)
            return
        sport, dport, end = parsed
        key = (src, sport)
        flows = self.flows
        flow = flows.get(key)
        if flow is None:
            handle = self._new_handle()
            if handle is None and flows:
                # the NAT table is full: the least recently used UDP flow makes room
                self._count("udp_lru_evicted")
                self._end(next(iter(flows.values())))
                handle = self._new_handle()
            if handle is None:
                self._count("udp_max_flows")
                return
            flow = UdpFlow(key, version, now, handle)
            self.flows[key] = flow
            self.handles[handle] = flow
            self._count("udp_flows")
            self._event(UdpOpened(handle, src, sport, dst, dport))
            self._schedule(flow)
        else:
            flows.move_to_end(key)  # least recently used first
        flow.last_active = now
        if len(flow.queue) >= self.queue_packets:
            self._count("udp_queue_full")
            return
        budget = self.budget
        if budget is not None:
            n = end - l4 - 8
            if n > budget.room():
                self._count("udp_buffer_budget_full")
                return
            budget.charge(n)
            flow.queued_bytes += n
        flow.queue.append((packet[l4 + 8:end], dst, dport))
        if flow.want_read:
            flow.want_read = False
            self._event(UdpReadable(flow.handle))

    # --- timers ---------------------------------------------------------------------------------

    def _schedule(self, flow: UdpFlow) -> None:
        d = flow.last_active + self.idle_timeout
        if d < flow.scheduled:
            flow.scheduled = d
            heapq.heappush(self._timers, (d, flow.handle, flow))

    def next_timer(self) -> float | None:
        timers = self._timers
        while timers and timers[0][2].scheduled != timers[0][0]:
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def handle_timer(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            d, _h, flow = heapq.heappop(timers)
            if flow.scheduled != d:
                continue
            flow.scheduled = INF
            if self.flows.get(flow.key) is not flow:
                continue
            if now >= flow.last_active + self.idle_timeout:
                self._count("udp_idle_timeout")
                self._end(flow)
            else:
                self._schedule(flow)

    def _end(self, flow: UdpFlow) -> None:
        if self.flows.get(flow.key) is flow:
            del self.flows[flow.key]
            flow.scheduled = INF
            if flow.held:
                self._event(UdpClosed(flow.handle))

    def reset_all(self) -> None:
        for flow in list(self.flows.values()):
            self._end(flow)

    # --- the StackCore UDP operations -------------------------------------------------------------

    def recv(self, handle: int) -> tuple[bytes, bytes, int] | None:
        flow = self.handles[handle]
        if flow.queue:
            item = flow.queue.popleft()
            if self.budget is not None:
                flow.queued_bytes -= len(item[0])
                self.budget.release(len(item[0]))
            return item
        if self.flows.get(flow.key) is flow:
            flow.want_read = True
        return None

    def send(self, handle: int, data: bytes, src: bytes, sport: int, now: float) -> bool:
        flow = self.handles[handle]
        flow.last_active = now
        if len(src) != len(flow.key[0]):
            self._count("udp_family_mismatch")
            return False
        if len(data) + 8 + (20 if flow.version == 4 else 40) > self.mtu:
            self._count("udp_too_big")
            return False
        self._out(build_udp(flow.version, src, sport, flow.key[0], flow.key[1], data, self.vnet_hdr))
        return True

    def close(self, handle: int) -> None:
        flow = self.handles.pop(handle)
        flow.held = flow.want_read = False
        self._end(flow)
        if self.budget is not None and flow.queued_bytes:
            self.budget.release(flow.queued_bytes)
            flow.queued_bytes = 0
        flow.queue.clear()
