"""The ``tun`` inbound's settings: Xray's keys plus tunray's stack and limits.

Xray's keys (``name``, ``mtu``, ``gateway``, ``dns``, ``userLevel``,
``autoSystemRoutingTable``, ``autoOutboundsInterface``, ``desc``) keep Xray's meaning;
``dns`` and ``desc`` are accepted and have no effect on Linux.  tunray adds the stack
choice, its settings, the handshake mode, offloads and the resource limits.

``autoOutboundsInterface``: absent (or ``null``) means ``"auto"`` when
``autoSystemRoutingTable`` is non-empty and off otherwise, as in Xray; ``""`` turns it
off explicitly; ``"auto"`` detects the uplink; any other string names an interface.

The stack name is checked against the plugin registry in
:meth:`TunInbound.validate_config`, so ``tunray run -test`` reports an unknown stack
with the list of installed ones.  ``handshake`` and ``offload`` follow the stack's
capabilities (:class:`~tunray.stackcore.StackCapabilities`): left out, they default to
``"lazy"`` / ``true`` only where the stack can do it (else ``"eager"`` / ``false``);
asked for explicitly from a stack that cannot, they are a config error naming the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from tunray.config.errors import ConfigError, join
from tunray.config.schema import (
    CIDR,
    IP,
    AnyValue,
    Bool,
    Enum,
    Field,
    Int,
    InterfaceAddress,
    ListOf,
    Schema,
    Settings,
    Str,
)
from tunray.stack import Stack

IFNAME = r"[^\s/:]{1,15}"  # IFNAMSIZ - 1 bytes, no whitespace, '/' or ':'
DEFAULT_STACK = "python"

FIELDS: tuple[Field, ...] = (
    Field("name", Str(pattern=IFNAME), default="", doc="interface name; empty = the kernel's next free tunN"),
    Field("mtu", Int(min=576, max=65535), default=1500,
          doc="link MTU, also the stack's MTU (left out: the stack's default_mtu, e.g. 65535 for system)"),
    Field(
        "gateway", ListOf(InterfaceAddress), default=[], doc="addresses (with prefix) put on the interface"
    ),
    Field("dns", ListOf(IP), default=[], doc="Windows only in Xray; accepted and ignored with a warning"),
    Field("userLevel", Int(min=0), default=0, doc="policy level of TUN flows"),
    Field(
        "autoSystemRoutingTable",
        ListOf(CIDR),
        default=[],
        doc="prefixes routed into the TUN (main table, on-link, metric 1)",
    ),
    Field(
        "autoOutboundsInterface",
        Str(),
        default=None,
        doc='"auto", an interface name, or "" (off); absent = "auto" if routes are set',
    ),
    Field("desc", Str(), default="", doc="Windows adapter description; ignored"),
    Field(
        "stack", Str(non_empty=True), default=DEFAULT_STACK, doc="registered stack turning packets into flows"
    ),
    Field("stackSettings", AnyValue(), default=None, doc="object validated by the stack's own schema"),
    Field(
        "handshake",
        Enum("lazy", "eager"),
        default="lazy",
        doc="lazy: SYN-ACK only after the upstream connects (left out: eager if the stack cannot)",
    ),
    Field("offload", Bool(), default=True,
          doc="IFF_VNET_HDR with checksum and TSO offloads (left out: off if the stack cannot read them)"),
    Field(
        "maxFlows", Int(min=1), default=4096, doc="open flows at most; the stack refuses new ones beyond it"
    ),
    Field("workers", Int(min=1, max=256), default=None,
          doc="worker processes, one TUN queue each (tunray run only); absent = the number of CPUs"),
    Field(
        "maxHalfOpen",
        Int(min=1),
        default=256,
        doc="TCP handshakes in progress (each may dial) at most; beyond it SYNs get SYN cookies (python) "
            "or take the oldest handshake's slot (lwip, system)",
    ),
    Field("udpQueuePackets", Int(min=1), default=1024, doc="datagrams queued per UDP flow; beyond: dropped, counted"),
    Field(
        "maxHalfOpenPerSource",
        Int(min=1),
        default=64,
        doc="the same per app address, so no one source takes the whole budget",
    ),
    Field("udpTimeout", Int(min=1), default=60, doc="seconds a UDP flow may sit idle before it is closed"),
    Field(
        "hostAccess",
        Enum("rules", "allow"),
        default="rules",
        doc='"rules": flows may reach this host\'s own addresses only where a routing rule\'s ip names them; "allow": as Xray',
    ),
    Field("tcpBufferSize", Int(min=16), default=4096, doc="per-TCP-flow buffer in KiB (receive window cap)"),
    Field("maxBufferedBytes", Int(min=1 << 16), default=64 << 20,
          doc="bytes from apps held for all TCP flows together (split between workers); beyond it "
              "receive windows stop opening until outbounds read"),
)


def _check(s: Settings, path: str) -> None:
    if s.autoOutboundsInterface not in (None, "", "auto"):
        Str(pattern=IFNAME).parse(s.autoOutboundsInterface, join(path, "autoOutboundsInterface"))


def schema() -> Schema:
    """The settings schema (the stack name is checked by ``TunInbound.validate_config``)."""
    return Schema(*FIELDS, check=_check)


def stack_class(stacks: Mapping[str, Any], name: str, path: str) -> type[Stack]:
    cls: type[Stack] | None = stacks.get(name.lower())
    if cls is None:
        known = ", ".join(sorted(stacks)) or "none"
        raise ConfigError(path, f"unknown stack {name!r}: installed stacks are {known}")
    return cls


def parse_stack_settings(stacks: Mapping[str, Any], s: Settings, path: str) -> Settings:
    """The stack's own settings; also refuses what the stack cannot do (:func:`check_capabilities`)."""
    cls = stack_class(stacks, s.stack, join(path, "stack"))
    check_capabilities(cls, s, path)
    return cls.settings_schema.parse(s.stackSettings, join(path, "stackSettings"))


def _given(s: Settings, key: str) -> bool:
    raw = s.raw if isinstance(s.raw, dict) else {}
    return any(str(k).lower() == key.lower() for k in raw)


def check_capabilities(stack_cls: type[Stack], s: Settings, path: str) -> None:
    """Refuse what the user asked for and the stack cannot do (never a silent downgrade)."""
    caps = stack_cls.capabilities
    if s.handshake == "lazy" and not caps.lazy_handshake and _given(s, "handshake"):
        raise ConfigError(
            join(path, "handshake"),
            f'"lazy" is not supported by stack {stack_cls.name!r}: it cannot hold a SYN until the upstream '
            'connects (use "eager" or another stack)',
        )
    for key in ("maxHalfOpen", "maxHalfOpenPerSource"):
        if not caps.half_open_budget and _given(s, key):
            raise ConfigError(
                join(path, key),
                f"is not supported by stack {stack_cls.name!r}: it keeps no separate half-open budget "
                "(leave it out or use the python stack)",
            )
    if not caps.buffer_budget and _given(s, "maxBufferedBytes"):
        raise ConfigError(
            join(path, "maxBufferedBytes"),
            f"is not supported by stack {stack_cls.name!r}: the kernel's TCP holds the bytes (bounded per "
            "socket by net.ipv4.tcp_rmem, in total by net.ipv4.tcp_mem); leave it out or use python or lwip",
        )
    if s.offload and not caps.vnet_hdr and _given(s, "offload"):
        raise ConfigError(
            join(path, "offload"),
            f"true is not supported by stack {stack_cls.name!r}: it does not read virtio-net headers "
            "(use false or another stack)",
        )


def effective_handshake(stack_cls: type[Stack], s: Settings) -> str:
    """``settings.handshake``, or ``"eager"`` when it was left out and the stack cannot hold a SYN."""
    handshake: str = s.handshake
    return handshake if stack_cls.capabilities.lazy_handshake else "eager"


def effective_offload(stack_cls: type[Stack], s: Settings) -> bool:
    """``settings.offload``, or off when it was left out and the stack cannot read vnet headers."""
    return bool(s.offload) and stack_cls.capabilities.vnet_hdr


def effective_mtu(stack_cls: type[Stack], s: Settings) -> int:
    """``settings.mtu``, or the stack's :attr:`~tunray.stack.Stack.default_mtu` when it was left out."""
    mtu: int = s.mtu
    if not _given(s, "mtu") and stack_cls.default_mtu is not None:
        return stack_cls.default_mtu
    return mtu


def worker_count(s: Settings) -> int:
    """``settings.workers``, or the number of CPUs when it was left out."""
    n: int | None = s.workers
    return n if n is not None else (os.cpu_count() or 1)


def uplink_mode(s: Settings) -> str:
    """The effective ``autoOutboundsInterface``: ``""`` (off), ``"auto"`` or a name."""
    mode: str | None = s.autoOutboundsInterface
    if mode is None:
        return "auto" if s.autoSystemRoutingTable else ""
    return mode
