"""TypedSchema: settings declared once as a frozen dataclass, parsed with JSON paths, read typed."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
from tunray.config.errors import ConfigError, NotSupported
from tunray.config.schema import EMPTY, Bool, Enum, Int, ListOf, Str, TypedSchema, Unsupported, setting


@dataclass(frozen=True, slots=True)
class Example:
    buffer_size: int = setting(65536, Int(min=1024), "bytes per flow", key="bufferSize")
    mode: str = setting("fast", Enum("fast", "safe"), "how to run")
    verbose: bool = setting(False, Bool(), "log more")
    names: tuple[str, ...] = setting((), ListOf(Str()), "who", aliases=("users",))


SCHEMA = TypedSchema(Example, Unsupported("legacy"))


def test_parse_typed_applies_defaults_and_keys() -> None:
    got = SCHEMA.parse_typed({"BUFFERSIZE": 4096, "mode": "SAFE", "users": ["a"]}, "x.settings")
    assert got == Example(buffer_size=4096, mode="safe", verbose=False, names=["a"])  # type: ignore[arg-type]
    assert SCHEMA.typed(EMPTY.parse({}, "")) == Example(), "settings parsed elsewhere (empty): every default"
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.mode = "fast"  # type: ignore[misc]


def test_errors_name_the_json_path() -> None:
    with pytest.raises(ConfigError) as info:
        SCHEMA.parse_typed({"bufferSize": 10}, "inbounds[2].settings")
    assert info.value.path == "inbounds[2].settings.bufferSize" and "minimum 1024" in info.value.message
    with pytest.raises(NotSupported) as unsupported:
        SCHEMA.parse_typed({"legacy": True}, "s")
    assert unsupported.value.path == "s.legacy"


def test_the_schema_documents_the_dataclass() -> None:
    assert list(SCHEMA.document()) == [
        ("bufferSize", "an integer", 65536, "bytes per flow"),
        ("mode", "one of 'fast', 'safe'", "fast", "how to run"),
        ("verbose", "true or false", False, "log more"),
        ("names", "an array of a string", (), "who"),
    ]


def test_every_field_must_be_declared_with_setting() -> None:
    @dataclass(frozen=True)
    class Needs:
        token: str | None = setting(None, Str())
        port: int = dataclasses.field(default=1, metadata={})

    with pytest.raises(TypeError, match="port is not declared with setting"):
        TypedSchema(Needs)
    with pytest.raises(TypeError, match="not a dataclass"):
        TypedSchema(int)
