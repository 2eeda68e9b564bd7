"""Type registries filled by ``tunray_register_types`` at start-up.

The data path looks classes up here with plain dicts (``registry.outbounds["vless"]``);
hooks are never called per packet.  Each entry remembers which distribution
registered it so a clash can name both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunray.config.schema import Schema


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

    def add_inbound(self, cls: Any, *, replace: bool = False) -> None:
        self._add("inbound protocol", self.inbounds, cls.protocol, cls, replace)

    def add_outbound(self, cls: Any, *, replace: bool = False) -> None:
        self._add("outbound protocol", self.outbounds, cls.protocol, cls, replace)

    def add_stack(self, cls: Any, *, replace: bool = False) -> None:
        self._add("stack", self.stacks, cls.name, cls, replace)

    def add_transport(self, cls: Any, *, replace: bool = False) -> None:
        """A transport (``name``, optional ``aliases``) or a security layer (``security:NAME``)."""
        self._add("transport", self.transports, cls.name, cls, replace)
        for alias in getattr(cls, "aliases", ()):
            self._add("transport", self.transports, alias, cls, replace)

    def transport(self, name: str) -> Any:
        return self.transports.get(name.lower())

    def add_section(self, key: str, schema: Schema, *, replace: bool = False) -> None:
        self._add("config section", self.sections, key, schema, replace)

    def owner(self, kind: str, name: str) -> str:
        return self.owners.get((kind, name.lower()), "?")
