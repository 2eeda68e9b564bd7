"""Declarative settings schemas, validated before any device or socket is opened.

A plugin declares its settings next to its class::

    settings_schema = Schema(
        Field("domainStrategy", Enum(*STRATEGIES), default="AsIs", doc="how to resolve domains"),
        Field("redirect", Str(), default=None, doc="send every flow to this host:port"),
    )

``schema.parse(raw, path)`` returns a :class:`Settings` with one attribute per field
(named as in JSON) or raises :class:`ConfigError` naming the JSON path.

Keys are matched case-insensitively, as Xray's Go decoder does (``"MTU"`` is ``mtu``).
Unknown keys are logged and ignored, as Xray ignores them; keys that Xray knows but
tunray does not implement are declared with :func:`Unsupported` and are an error.

A value type is anything with ``parse(value, path) -> object`` and a ``describe()``
used in messages and docs; the common ones live here, special ones (CIDRs, UUIDs,
port lists) beside the code that needs them.

Typed settings.  Declare the settings once, as a frozen dataclass whose fields say their
JSON key, type and doc through :func:`setting`, and build the schema from it::

    @dataclass(frozen=True, slots=True)
    class MySettings:
        buffer: int = setting(65536, Int(min=1024), "bytes per flow", key="bufferSize")

    settings_schema = TypedSchema(MySettings)
    opts = settings_schema.typed(parsed)   # MySettings, attributes typed for mypy

The default lives in one place (the dataclass); :meth:`TypedSchema.parse` still returns
a :class:`Settings` so generic code (the inbound handing ``stackSettings`` over) is unchanged.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from loguru import logger

from tunray.config.errors import SECRET_KEYS, ConfigError, NotSupported, join, mask

REQUIRED: Any = object()


class ValueType(Protocol):
    def parse(self, value: Any, path: str) -> Any: ...

    def describe(self) -> str: ...


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def expected(path: str, what: str, value: Any) -> ConfigError:
    return ConfigError(path, f"expected {what}, got {_kind(value)}")


@dataclass(frozen=True)
class Str:
    pattern: str | None = None
    non_empty: bool = False

    def parse(self, value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise expected(path, self.describe(), value)
        if self.non_empty and not value:
            raise ConfigError(path, "must not be empty")
        if self.pattern and not re.fullmatch(self.pattern, value):
            raise ConfigError(path, f"{value!r} does not match {self.pattern}")
        return value

    def describe(self) -> str:
        return "a string"


@dataclass(frozen=True)
class Int:
    min: int | None = None
    max: int | None = None
    accept_string: bool = False

    def parse(self, value: Any, path: str) -> int:
        if self.accept_string and isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            value = int(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise expected(path, self.describe(), value)
        if self.min is not None and value < self.min:
            raise ConfigError(path, f"{value} is below the minimum {self.min}")
        if self.max is not None and value > self.max:
            raise ConfigError(path, f"{value} is above the maximum {self.max}")
        return value

    def describe(self) -> str:
        if self.min is not None and self.max is not None:
            return f"an integer from {self.min} to {self.max}"
        return "an integer"


@dataclass(frozen=True)
class Bool:
    def parse(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise expected(path, "true or false", value)
        return value

    def describe(self) -> str:
        return "true or false"


class Enum:
    """One of a fixed set of strings, matched case-insensitively; returns the canonical spelling."""

    def __init__(self, *choices: str, aliases: dict[str, str] | None = None) -> None:
        self.choices = choices
        self._lookup = {c.lower(): c for c in choices}
        for alias, target in (aliases or {}).items():
            self._lookup[alias.lower()] = target

    def parse(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or value.lower() not in self._lookup:
            raise expected(path, self.describe(), value)
        return self._lookup[value.lower()]

    def describe(self) -> str:
        return "one of " + ", ".join(repr(c) for c in self.choices)


@dataclass(frozen=True)
class ListOf:
    item: ValueType
    allow_single: bool = False
    min_items: int = 0
    max_items: int | None = None
    comma_string: bool = False

    def parse(self, value: Any, path: str) -> list[Any]:
        if self.comma_string and isinstance(value, str):
            value = [part for part in value.split(",")]
        elif self.allow_single and not isinstance(value, list):
            value = [value]
        if not isinstance(value, list):
            raise expected(path, self.describe(), value)
        if len(value) < self.min_items:
            raise ConfigError(path, f"needs at least {self.min_items} item(s), got {len(value)}")
        if self.max_items is not None and len(value) > self.max_items:
            raise ConfigError(path, f"allows at most {self.max_items} item(s), got {len(value)}")
        return [self.item.parse(v, join(path, i)) for i, v in enumerate(value)]

    def describe(self) -> str:
        return f"an array of {self.item.describe()}"


@dataclass(frozen=True)
class MapOf:
    item: ValueType

    def parse(self, value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise expected(path, "an object", value)
        return {k: self.item.parse(v, join(path, k)) for k, v in value.items()}

    def describe(self) -> str:
        return f"an object of {self.item.describe()}"


@dataclass(frozen=True)
class AnyValue:
    def parse(self, value: Any, path: str) -> Any:
        return value

    def describe(self) -> str:
        return "any value"


@dataclass(frozen=True)
class OneOf:
    """The first alternative that parses wins; the message lists them all."""

    alternatives: tuple[ValueType, ...]

    def parse(self, value: Any, path: str) -> Any:
        for alt in self.alternatives:
            try:
                return alt.parse(value, path)
            except ConfigError:
                continue
        raise expected(path, self.describe(), value)

    def describe(self) -> str:
        return " or ".join(a.describe() for a in self.alternatives)


@dataclass(frozen=True)
class Converted:
    """Parse with *inner*, then convert; a ``ValueError`` from *convert* becomes a ConfigError."""

    inner: ValueType
    convert: Callable[[Any], Any]
    what: str

    def parse(self, value: Any, path: str) -> Any:
        raw = self.inner.parse(value, path)
        try:
            return self.convert(raw)
        except ValueError as exc:
            raise ConfigError(path, f"{exc} (expected {self.what})") from None

    def describe(self) -> str:
        return self.what


def _cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address or CIDR") from None
    return iface.network


def _interface(text: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    try:
        return ipaddress.ip_interface(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an address/prefix") from None


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None


CIDR = Converted(Str(), _cidr, "a CIDR like 10.0.0.0/8 or fd00::/64")
InterfaceAddress = Converted(Str(), _interface, "an address with prefix like 10.0.0.1/30")
IP = Converted(Str(), _ip, "an IP address")


@dataclass(frozen=True)
class Field:
    key: str
    type: ValueType
    default: Any = REQUIRED
    doc: str = ""
    aliases: tuple[str, ...] = ()

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class UnsupportedField:
    key: str
    what: str
    allow: Callable[[Any], bool] | None = None


def Unsupported(key: str, what: str = "", allow: Callable[[Any], bool] | None = None) -> UnsupportedField:
    """Declare an Xray key that tunray does not implement; *allow* lists harmless values."""
    return UnsupportedField(key, what or f"{key!r}", allow)


class Settings:
    """Parsed settings: one attribute per declared field, plus ``raw`` (the input object)."""

    def __init__(self, values: dict[str, Any], raw: dict[str, Any]) -> None:
        self.__dict__.update(values)
        self._values = values
        self.raw = raw

    def __getattr__(self, name: str) -> Any:  # only called for missing attributes
        raise AttributeError(name)

    def get(self, key: str, default: Any = None) -> Any:
        return self._values.get(key, default)

    def items(self) -> Iterator[tuple[str, Any]]:
        return iter(self._values.items())

    def __repr__(self) -> str:
        shown = {k: mask(v) if k.lower() in SECRET_KEYS else v for k, v in self._values.items()}
        return f"Settings({shown!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Settings) and other._values == self._values


class Schema:
    """An object with declared fields; see the module docstring."""

    def __init__(
        self,
        *fields: Field | UnsupportedField,
        check: Callable[[Settings, str], None] | None = None,
        strict: bool = False,
    ) -> None:
        self.fields = [f for f in fields if isinstance(f, Field)]
        self.unsupported = [f for f in fields if isinstance(f, UnsupportedField)]
        self._check = check
        self._strict = strict
        self._by_key: dict[str, Field | UnsupportedField] = {}
        for f in fields:
            self._by_key[f.key.lower()] = f
            for alias in getattr(f, "aliases", ()):
                self._by_key[alias.lower()] = f

    def extend(self, *fields: Field | UnsupportedField) -> Schema:
        return Schema(*self.fields, *self.unsupported, *fields, check=self._check, strict=self._strict)

    def parse(self, value: Any, path: str) -> Settings:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise expected(path, "an object", value)
        seen: dict[str, Any] = {}
        for key, item in value.items():
            spec = self._by_key.get(str(key).lower())
            sub = join(path, key)
            if spec is None:
                if self._strict:
                    raise ConfigError(sub, "unknown field")
                logger.warning("config: {}: unknown field ignored", sub)
                continue
            if isinstance(spec, UnsupportedField):
                if item in (None, False, "", [], {}) or (spec.allow is not None and spec.allow(item)):
                    continue
                raise NotSupported(sub, spec.what)
            if spec.key in seen:
                # Both a key and its alias (or two spellings) were given: the later wins, as in Go.
                pass
            seen[spec.key] = (item, sub)
        values: dict[str, Any] = {}
        for f in self.fields:
            if f.key in seen:
                item, sub = seen[f.key]
                values[f.key] = f.type.parse(item, sub) if item is not None or f.required else f.default
            elif f.required:
                raise ConfigError(join(path, f.key), f"is required ({f.type.describe()})")
            else:
                values[f.key] = f.default
        settings = Settings(values, value)
        if self._check is not None:
            self._check(settings, path)
        return settings

    def describe(self) -> str:
        return "an object"

    def document(self) -> Iterable[tuple[str, str, Any, str]]:
        """Rows of (key, type, default, doc) for generated documentation."""
        for f in self.fields:
            yield f.key, f.type.describe(), None if f.default is REQUIRED else f.default, f.doc


EMPTY = Schema()

T = TypeVar("T")
_META = "tunray.setting"


def setting(default: Any, type: ValueType, doc: str = "", *, key: str | None = None,
            aliases: tuple[str, ...] = ()) -> Any:
    """A dataclass field that is also a schema field (see "Typed settings" above).

    *key* is the JSON key (default: the attribute name).  The default must be immutable
    (use tuples, not lists): the dataclass is frozen and shared.
    """
    return dataclasses.field(default=default, metadata={_META: (type, doc, key, aliases)})


class TypedSchema(Schema, Generic[T]):
    """A :class:`Schema` whose fields come from a frozen dataclass *cls* built with :func:`setting`."""

    def __init__(self, cls: type[T], *extra: UnsupportedField,
                 check: Callable[[Settings, str], None] | None = None, strict: bool = False) -> None:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} is not a dataclass")
        fields: list[Field | UnsupportedField] = []
        self._names: list[tuple[str, str]] = []  # (attribute, JSON key)
        for f in dataclasses.fields(cls):
            meta = f.metadata.get(_META)
            if meta is None:
                raise TypeError(f"{cls.__name__}.{f.name} is not declared with setting()")
            vtype, doc, key, aliases = meta
            default = REQUIRED if f.default is dataclasses.MISSING else f.default
            fields.append(Field(key or f.name, vtype, default=default, doc=doc, aliases=aliases))
            self._names.append((f.name, key or f.name))
        super().__init__(*fields, *extra, check=check, strict=strict)
        self.cls = cls

    def typed(self, settings: Settings) -> T:
        """The dataclass for *settings* parsed by this schema (or ``EMPTY``: every default)."""
        values = settings._values
        return self.cls(**{name: values[key] if key in values else self._default(key) for name, key in self._names})

    def _default(self, key: str) -> Any:
        spec = self._by_key[key.lower()]
        assert isinstance(spec, Field)
        if spec.required:
            raise ValueError(f"setting {key!r} is required and was not parsed")
        return spec.default

    def parse_typed(self, value: Any, path: str) -> T:
        """Validate *value* (raising :class:`ConfigError` naming *path*) and return the dataclass."""
        return self.typed(self.parse(value, path))
