"""Template: a transport class (``streamSettings.network``) with validated settings."""

from __future__ import annotations

MODULE = "transport"

SOURCE = '''\
"""The ``$name`` transport: selected by ``streamSettings.network: "$name"``.

A transport class is registered with ``registry.add_transport(cls)`` under its
``name``; a security layer registers as ``"security:<name>"`` and is selected by
``streamSettings.security``.  While the config is validated, tunray calls
``cls.validate(stream_settings, path)`` for the transport the config names, so a
mistake in ``${name_id}Settings`` fails ``tunray run -test`` with its JSON path.

The dial API (how an outbound asks a transport for a connected stream) is being
finalised with the VLESS outbound; this class implements what exists today:
``name``, a schema and ``validate``, plus ``settings(stream_settings, path)`` that
an outbound can call to get the parsed settings.
"""

from __future__ import annotations

from typing import Any, ClassVar

from tunray.config.errors import join
from tunray.config.schema import Field, Int, ListOf, Schema, Settings, Str
from tunray.transport import Layer


def _raw_section(stream_settings: Settings, key: str) -> tuple[str, Any]:
    """The raw ``<name>Settings`` object, matched case-insensitively as Xray's decoder does."""
    for k, v in stream_settings.raw.items():
        if str(k).lower() == key.lower():
            return str(k), v
    return key, None


class $cls(Layer):  # registries accept Layer subclasses only; wrap() is still to be written
    name: ClassVar[str] = "$name"
    settings_key: ClassVar[str] = "${name_id}Settings"
    settings_schema: ClassVar[Schema] = Schema(
        Field("path", Str(pattern=r"/.*"), default="/", doc="request path; must start with /"),
        Field("host", Str(), default="", doc="Host header; empty = the server address"),
        Field("headers", ListOf(Str()), default=[], doc="extra header lines"),
        Field("maxEarlyData", Int(min=0, max=65536), default=0, doc="bytes sent with the handshake"),
    )

    @classmethod
    def settings(cls, stream_settings: Settings, path: str) -> Settings:
        key, raw = _raw_section(stream_settings, cls.settings_key)
        return cls.settings_schema.parse(raw, join(path, key))

    @classmethod
    def validate(cls, stream_settings: Settings, path: str) -> None:
        """Raise :class:`~tunray.config.errors.ConfigError` (with its JSON path) for bad settings."""
        cls.settings(stream_settings, path)
'''

TEST = '''\
"""$name: registration and config validation through tunray's own config builder."""

from __future__ import annotations

from typing import Any

import pytest
from tunray.config.errors import ConfigError
from tunray.config.model import build_config
from tunray.plugin.manager import PluginManager

from $pkg.transport import $cls


def config(stream: dict[str, Any]) -> dict[str, Any]:
    return {"outbounds": [{"protocol": "blackhole", "streamSettings": stream}]}


def test_registered_under_its_network_name() -> None:
    assert PluginManager().registry.transports["$name"] is $cls


def test_a_config_selecting_it_validates() -> None:
    pm = PluginManager()
    stream = {"network": "$name", "${name_id}Settings": {"path": "/tunnel", "maxEarlyData": 2048}}
    cfg = build_config(config(stream), pm.registry)
    ob = cfg.outbounds[0]
    assert ob.stream is not None and ob.stream.transport is $cls
    parsed = $cls.settings(ob.stream.settings, "outbounds[0].streamSettings")
    assert (parsed.path, parsed.maxEarlyData, parsed.host) == ("/tunnel", 2048, "")


@pytest.mark.parametrize(
    ("settings", "field"),
    [({"path": "no-slash"}, "path"), ({"maxEarlyData": -1}, "maxEarlyData"), ({"headers": "x"}, "headers")],
)
def test_bad_settings_name_the_json_path(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(config({"network": "$name", "${name_id}Settings": settings}), PluginManager().registry)
    assert info.value.path == f"outbounds[0].streamSettings.${name_id}Settings.{field}"
'''

FILES = {"$pkg/transport.py": SOURCE, "tests/test_${name_id}.py": TEST}
