"""UDP and ICMP echo for the ``system`` stack: the non-TCP half of a :class:`~tunray.stackcore.StackCore`.

Full-cone as Xray's TUN and sing-tun's ``udpnat2``: one flow per app source endpoint
``(ip, port)``, each datagram queued with its own destination, replies built with their
own source (:func:`tunray.net.packet.build_udp`), so any peer the outbound hears from
reaches the app.  The queue per flow is bounded (``queue_packets``) and drops when full;
a flow idle for ``idle`` seconds is closed.  ICMP echo requests to any address get a
local reply (:func:`tunray.net.packet.echo_reply`), as in Xray.  UDP payloads pass through
Python anyway, so their checksums are verified here (:func:`tunray.net.packet.parse_udp`).
"""

from __future__ import annotations

import heapq
from collections import deque

from tunray.net.packet import build_udp, echo_reply, parse_udp
from tunray.stackcore import CoreEvent, UdpClosed, UdpOpened, UdpReadable


class UdpFlow:
    __slots__ = ("deadline", "handle", "held", "key", "last", "queue", "version", "want_read")

    def __init__(self, key: tuple[bytes, int], version: int, handle: int, now: float) -> None:
        self.key = key
        self.version = version
        self.handle = handle
        self.held = True
        self.queue: deque[tuple[bytes, bytes, int]] = deque()
        self.last = now
        self.deadline = 0.0
        self.want_read = False


class UdpCore:
    """UDP flows and ICMP echo; packets come pre-parsed from :class:`~tunray_stack_system.core.SystemCore`."""

    def __init__(self, *, mtu: int, vnet_hdr: bool, idle: float, queue_packets: int, max_flows: int,
                 counters: dict[str, int], events: list[CoreEvent], out: list[bytes]) -> None:
        self.mtu = mtu
        self.vnet = vnet_hdr
        self.idle = idle
        self.queue_packets = queue_packets
        self.max_flows = max_flows
        self.counters = counters
        self.events = events
        self.out = out
        self.flows: dict[tuple[bytes, int], UdpFlow] = {}
        self.handles: dict[int, UdpFlow] = {}
        self._timers: list[tuple[float, int]] = []  # (deadline, handle), lazily deleted
        self._last_handle = 0

    def count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    def icmp(self, version: int, src: bytes, dst: bytes, message: bytes) -> None:
        reply = echo_reply(version, src, dst, message, self.vnet)
        if isinstance(reply, str):
            self.count(reply)
        else:
            self.count("icmp_echo_replied")
            self.out.append(reply)

    def udp(self, version: int, src: bytes, dst: bytes, packet: bytes, l4: int, end: int, csum_ok: bool,
            now: float) -> None:
        parsed = parse_udp(version, src, dst, packet, l4, end, csum_ok)
        if isinstance(parsed, str):
            self.count(parsed)
            return
        sport, dport, end = parsed
        key = (src, sport)
        flow = self.flows.get(key)
        if flow is None:
            if len(self.flows) >= self.max_flows:
                self.count("udp_max_flows")
                return
            self._last_handle += 1
            flow = UdpFlow(key, version, self._last_handle, now)
            self.flows[key] = flow
            self.handles[flow.handle] = flow
            self.count("udp_flows")
            self.events.append(UdpOpened(flow.handle, src, sport, dst, dport))
            self._arm(flow, now)
        flow.last = now
        if len(flow.queue) >= self.queue_packets:
            self.count("udp_queue_full")
            return
        flow.queue.append((packet[l4 + 8:end], dst, dport))
        if flow.want_read:
            flow.want_read = False
            self.events.append(UdpReadable(flow.handle))

    def _arm(self, flow: UdpFlow, now: float) -> None:
        flow.deadline = flow.last + self.idle
        heapq.heappush(self._timers, (flow.deadline, flow.handle))

    def _end(self, flow: UdpFlow) -> None:
        if self.flows.get(flow.key) is flow:
            del self.flows[flow.key]
            if flow.held:
                self.events.append(UdpClosed(flow.handle))
        if not flow.held:
            self.handles.pop(flow.handle, None)

    def next_timer(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    def handle_timer(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            _d, handle = heapq.heappop(timers)
            flow = self.handles.get(handle)
            if flow is None or self.flows.get(flow.key) is not flow:
                continue
            if now >= flow.last + self.idle:
                self.count("udp_idle_timeout")
                self._end(flow)
            else:
                self._arm(flow, now)

    def reset_all(self) -> None:
        for flow in list(self.flows.values()):
            self._end(flow)

    # --- the StackCore protocol, UDP by handle ------------------------------------------------------

    def udp_recv(self, handle: int) -> tuple[bytes, bytes, int] | None:
        flow = self.handles[handle]
        if flow.queue:
            return flow.queue.popleft()
        if self.flows.get(flow.key) is flow:
            flow.want_read = True
        return None

    def udp_send(self, handle: int, data: bytes, src: bytes, sport: int, now: float) -> bool:
        flow = self.handles[handle]
        flow.last = now
        if len(src) != len(flow.key[0]):
            self.count("udp_family_mismatch")
            return False
        if len(data) + 8 + (20 if flow.version == 4 else 40) > self.mtu:
            self.count("udp_too_big")
            return False
        self.out.append(build_udp(flow.version, src, sport, flow.key[0], flow.key[1], data, self.vnet))
        return True

    def udp_close(self, handle: int, now: float) -> None:
        flow = self.handles.pop(handle)
        flow.held = flow.want_read = False
        self._end(flow)
