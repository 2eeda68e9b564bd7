"""VLESS outbound ``settings`` (Xray ``infra/conf/vless.go``), both JSON forms.

Legacy::

    {"vnext": [{"address": "a", "port": 443, "users": [{"id": "...", "flow": "", "encryption": "none"}]}]}

Simplified (Xray's documented default)::

    {"address": "a", "port": 443, "id": "...", "flow": "", "encryption": "none"}

Both reduce to one :class:`ServerSpec`.  As in Xray, ``vnext`` must hold exactly one
server with exactly one user; ``encryption`` must be ``"none"`` (the ML-KEM strings
are recognised and refused as unsupported); ``flow`` is ``""``, ``xtls-rprx-vision``
or ``xtls-rprx-vision-udp443``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from tunray.config.errors import ConfigError, NotSupported, join
from tunray.config.schema import AnyValue, Field, Int, ListOf, Schema, Settings, Str, Unsupported
from tunray.net.address import Destination, Network, parse_host
from tunray.net.uuid import from_text

from tunray_vless.codec.vision import DEFAULT_SEED

FLOW_VISION = "xtls-rprx-vision"
FLOW_VISION_UDP443 = "xtls-rprx-vision-udp443"
FLOWS = ("", FLOW_VISION, FLOW_VISION_UDP443)
PORT = Int(min=1, max=65535, accept_string=True)

USER_SCHEMA = Schema(
    Field("id", Str(), doc="UUID, or a 1-30 byte string mapped to a UUIDv5"),
    Field("flow", Str(), default="", doc='"", "xtls-rprx-vision" or "xtls-rprx-vision-udp443"'),
    Field("encryption", AnyValue(), default=None, doc='must be "none"'),
    Field("level", Int(min=0), default=0, doc="policy level"),
    Field("email", Str(), default="", doc="user label"),
)

SERVER_SCHEMA = Schema(
    Field("address", Str(non_empty=True), doc="server host"),
    Field("port", PORT, doc="server port"),
    Field("users", ListOf(AnyValue()), default=[], doc="exactly one user"),
)


@dataclass(frozen=True)
class ServerSpec:
    server: Destination
    user_id: uuid.UUID
    flow: str  # "" or "xtls-rprx-vision" (the -udp443 suffix is stripped into udp443)
    udp443: bool
    level: int
    email: str
    seed: tuple[int, int, int, int]

    @property
    def vision(self) -> bool:
        return self.flow == FLOW_VISION


def _encryption(value: Any, path: str) -> None:
    if value == "none":
        return
    if isinstance(value, str) and value.startswith("mlkem768x25519plus"):
        raise NotSupported(path, "VLESS encryption (mlkem768x25519plus)")
    if value is None or value == "":
        raise ConfigError(path, 'is missing: please add "encryption": "none"')
    raise ConfigError(path, f'expected "none", got {value!r}')


def _user(raw: dict[str, Any], path: str) -> tuple[uuid.UUID, str, int, str]:
    user = USER_SCHEMA.parse(raw, path)
    try:
        user_id = from_text(user.id)
    except ValueError as exc:
        raise ConfigError(join(path, "id"), str(exc)) from None
    if user.flow not in FLOWS:
        raise ConfigError(
            join(path, "flow"),
            f'unknown flow {user.flow!r}: expected "", "{FLOW_VISION}" or "{FLOW_VISION_UDP443}"',
        )
    _encryption(user.encryption, join(path, "encryption"))
    return user_id, user.flow, user.level, user.email


def resolve(s: Settings, path: str) -> ServerSpec:
    """The one server and user of these settings; raises :class:`ConfigError` naming the path."""
    seed = tuple(s.testseed) if s.testseed else DEFAULT_SEED
    if len(seed) != 4 or seed[1] <= 0 or seed[3] <= 0:
        raise ConfigError(join(path, "testseed"), "expected 4 numbers, the 2nd and 4th above 0")
    if s.address is not None:
        if s.port is None:
            raise ConfigError(join(path, "port"), "is required with address")
        if s.id is None:
            raise ConfigError(join(path, "id"), "is required with address")
        user_raw = {k: v for k, v in s.raw.items() if k.lower() in {"id", "flow", "encryption", "level", "email"}}
        user_id, flow, level, email = _user(user_raw, path)
        address, port = s.address, s.port
    else:
        vnext = s.vnext
        if vnext is None:
            raise ConfigError(path, 'needs "address", "port", "id" and "encryption" (or a "vnext" list)')
        vpath = join(path, "vnext")
        if not isinstance(vnext, list):
            raise ConfigError(vpath, f"expected an array, got {type(vnext).__name__}")
        if len(vnext) != 1:
            raise ConfigError(
                vpath, f"must hold exactly one server, not {len(vnext)} (use one outbound per server and a balancer)"
            )
        spath = join(vpath, 0)
        server = SERVER_SCHEMA.parse(vnext[0], spath)
        if len(server.users) != 1:
            raise ConfigError(
                join(spath, "users"),
                f"must hold exactly one user, not {len(server.users)} (use one outbound per user and a balancer)",
            )
        user_id, flow, level, email = _user(server.users[0], join(join(spath, "users"), 0))
        address, port = server.address, server.port
    return ServerSpec(
        server=Destination(Network.TCP, parse_host(address), port),
        user_id=user_id,
        flow=FLOW_VISION if flow else "",
        udp443=flow == FLOW_VISION_UDP443,
        level=level,
        email=email,
        seed=(int(seed[0]), int(seed[1]), int(seed[2]), int(seed[3])),
    )


def _check(s: Settings, path: str) -> None:
    resolve(s, path)


SETTINGS_SCHEMA = Schema(
    Field("vnext", AnyValue(), default=None, doc="legacy form: [{address, port, users: [one user]}]"),
    Field("address", Str(non_empty=True), default=None, doc="simplified form: server host"),
    Field("port", PORT, default=None, doc="simplified form: server port"),
    Field("id", Str(), default=None, doc="simplified form: user id"),
    Field("flow", Str(), default="", doc="simplified form: flow"),
    Field("encryption", AnyValue(), default=None, doc='simplified form: must be "none"'),
    Field("level", Int(min=0), default=0, doc="simplified form: policy level"),
    Field("email", Str(), default="", doc="simplified form: user label"),
    Field("testseed", ListOf(Int(min=0)), default=[], doc="Vision padding parameters (4 numbers)"),
    Unsupported("testpre", "vless testpre (pre-dialed connections)"),
    Unsupported("reverse", "VLESS reverse (settings.reverse)"),
    check=_check,
)
