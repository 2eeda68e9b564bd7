"""Type registries filled by ``tunray_register_types`` at start-up.

The data path looks classes up here with plain dicts (``registry.outbounds["vless"]``);
hooks are never called per packet.  Each entry remembers which distribution
registered it so a clash can name both, and each class is checked against its contract
(``issubclass`` of :class:`~tunray.inbound.Inbound`, :class:`~tunray.outbound.Outbound`,
:class:`~tunray.stack.Stack` or :class:`~tunray.transport.Layer`) so a wrong class fails
at start-up naming its distribution, not on the first flow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tunray.config.schema import Schema

if TYPE_CHECKING:
    from tunray.inbound import Inbound
    from tunray.outbound import Outbound
    from tunray.stack import Stack
    from tunray.transport import Layer


class PluginError(Exception):
    """A plugin is broken (import error, clash, misspelt hook): one line, names the distribution."""


@dataclass(frozen=True)
class Entry:
    name: str
    cls: Any
    owner: str  # "distribution version (plugin name)"


@dataclass
class Registry:
    inbounds: dict[str, Any] = field(default_factory=dict)
    outbounds: dict[str, Any] = field(default_factory=dict)
    stacks: dict[str, Any] = field(default_factory=dict)
    transports: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, Schema] = field(default_factory=dict)
    owners: dict[tuple[str, str], str] = field(default_factory=dict)
    current_owner: str = "tunray"

    def _add(self, kind: str, table: dict[str, Any], name: str, obj: Any, replace: bool) -> None:
        key = name.lower()
        if key in table and not replace:
            raise PluginError(
                f"{kind} {name!r} is registered twice: by {self.owners[(kind, key)]} and by {self.current_owner}"
            )
        table[key] = obj
        self.owners[(kind, key)] = self.current_owner

    def _check(self, kind: str, cls: object, base: type, key: str) -> str:
        """*cls*'s registered name (its attribute *key*), after checking it is a subclass of *base*."""
        where = f"{base.__module__}.{base.__qualname__}"
        if not isinstance(cls, type) or not issubclass(cls, base):
            raise PluginError(f"{self.current_owner} registers {cls!r} as a {kind}, but it is not a subclass of {where}")
        name = getattr(cls, key, None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"{self.current_owner} registers {cls.__qualname__} as a {kind} without a {key!r} string")
        return name

    def add_inbound(self, cls: type[Inbound], *, replace: bool = False) -> None:
        from tunray.inbound import Inbound

        name = self._check("inbound", cls, Inbound, "protocol")
        self._add("inbound protocol", self.inbounds, name, cls, replace)

    def add_outbound(self, cls: type[Outbound], *, replace: bool = False) -> None:
        from tunray.outbound import Outbound

        name = self._check("outbound", cls, Outbound, "protocol")
        self._add("outbound protocol", self.outbounds, name, cls, replace)

    def add_stack(self, cls: type[Stack], *, replace: bool = False) -> None:
        from tunray.stack import Stack

        name = self._check("stack", cls, Stack, "name")
        self._add("stack", self.stacks, name, cls, replace)

    def add_transport(self, cls: type[Layer], *, replace: bool = False) -> None:
        """A transport (``name``, optional ``aliases``) or a security layer (``security:NAME``)."""
        from tunray.transport import Layer

        name = self._check("transport", cls, Layer, "name")
        self._add("transport", self.transports, name, cls, replace)
        for alias in getattr(cls, "aliases", ()):
            self._add("transport", self.transports, alias, cls, replace)

    def transport(self, name: str) -> Any:
        return self.transports.get(name.lower())

    def add_section(self, key: str, schema: Schema, *, replace: bool = False) -> None:
        self._add("config section", self.sections, key, schema, replace)

    def owner(self, kind: str, name: str) -> str:
        return self.owners.get((kind, name.lower()), "?")
