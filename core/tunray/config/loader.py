"""Reading config files the way Xray does.

* JSON with ``//``, ``#`` and ``/* */`` comments and trailing commas (Xray's reader
  strips comments before decoding); YAML and TOML chosen by extension or ``-format``.
* Several files (``-c a.json -c b.json``, or every file in ``-confdir`` in name
  order) merge exactly as Xray's ``Config.Override`` does, see :func:`merge`: later
  sections replace, inbounds merge by tag and append, outbounds merge by tag and are
  prepended unless the file name contains ``tail``.

Errors are :class:`ConfigError` whose path is the file name (and line for JSON).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from tunray.config.errors import ConfigError

FORMATS = ("json", "yaml", "toml")
_EXT = {".json": "json", ".jsonc": "json", ".yaml": "yaml", ".yml": "yaml", ".toml": "toml"}

_TOKENS = re.compile(
    r'"(?:[^"\\\n]|\\.)*"'  # a string (kept)
    r"|//[^\n]*"  # line comment
    r"|#[^\n]*"  # shell comment
    r"|/\*.*?\*/",  # block comment
    re.DOTALL,
)
_TRAILING_COMMA = re.compile(r",(\s*[\]}])")


def strip_json_comments(text: str) -> str:
    """Remove comments outside strings, keeping line numbers, and drop trailing commas."""

    def repl(m: re.Match[str]) -> str:
        tok = m.group(0)
        if tok.startswith('"'):
            return tok
        return "\n" * tok.count("\n")

    out = _TOKENS.sub(repl, text)
    # Trailing commas, outside strings: re-tokenise so commas in strings are untouched.
    parts: list[str] = []
    pos = 0
    for m in re.finditer(r'"(?:[^"\\\n]|\\.)*"', out):
        parts.append(_TRAILING_COMMA.sub(r"\1", out[pos : m.start()]))
        parts.append(m.group(0))
        pos = m.end()
    parts.append(_TRAILING_COMMA.sub(r"\1", out[pos:]))
    return "".join(parts)


def detect_format(path: str, forced: str | None = None) -> str:
    if forced and forced.lower() != "auto":
        fmt = forced.lower()
        if fmt not in FORMATS:
            raise ConfigError("", f"unknown config format {forced!r}: expected one of {', '.join(FORMATS)}")
        return fmt
    return _EXT.get(Path(path).suffix.lower(), "json")


def parse_text(text: str, fmt: str, name: str) -> dict[str, Any]:
    try:
        if fmt == "json":
            data = json.loads(strip_json_comments(text))
        elif fmt == "yaml":
            data = yaml.safe_load(text)
        else:
            data = tomllib.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(name, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(name, f"invalid YAML: {str(exc).splitlines()[0]}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(name, f"invalid TOML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(name, "the top level must be an object")
    return data


def read_file(path: str, fmt: str | None = None) -> dict[str, Any]:
    if path == "stdin:" or path == "-":
        import sys

        return parse_text(sys.stdin.read(), detect_format("x.json", fmt), "stdin")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, f"cannot read config file: {exc.strerror}") from None
    return parse_text(text, detect_format(path, fmt), path)


def _key(d: dict[str, Any], name: str) -> str | None:
    """The key in *d* matching *name* case-insensitively (Go's decoder does the same)."""
    for k in d:
        if k.lower() == name.lower():
            return k
    return None


def _tag(item: Any) -> Any:
    """An entry's tag for merging; Go's decoder matches the key case-insensitively ("Tag" too)."""
    if not isinstance(item, dict):
        return None
    k = _key(item, "tag")
    return item[k] if k is not None else ""


def _find(items: list[Any], tag: Any) -> int:
    for i, old in enumerate(items):
        if _tag(old) == tag:
            return i
    return -1


def _merge_inbounds(base: list[Any], extra: list[Any]) -> list[Any]:
    merged = list(base)
    for item in extra:
        i = _find(merged, _tag(item))
        if i >= 0:
            merged[i] = item
        else:
            merged.append(item)
    return merged


def _merge_outbounds(base: list[Any], extra: list[Any], name: str) -> list[Any]:
    merged = list(base)
    prepend: list[Any] = []
    tail = "tail" in name.lower()
    for item in extra:
        i = _find(merged, _tag(item))
        if i >= 0:
            merged[i] = item
        elif tail:
            merged.append(item)
        else:
            prepend.append(item)
    return prepend + merged


def merge(configs: Iterable[dict[str, Any]], names: Sequence[str] | None = None) -> dict[str, Any]:
    """Merge configs as Xray's ``Config.Override`` does (infra/conf/xray.go).

    The first config is taken as is.  For each later one (file *name*): any top-level
    section it has replaces the earlier one; each inbound replaces the earlier inbound
    with the same tag (an untagged one replaces the first untagged one) or is appended;
    each outbound replaces the one with its tag, else is *prepended* (keeping the file's
    order, so its first outbound becomes the default) unless the file name contains
    ``tail`` (any case), when it is appended.
    """
    result: dict[str, Any] = {}
    for n, cfg in enumerate(configs):
        name = names[n] if names is not None and n < len(names) else ""
        if n == 0:
            result = dict(cfg)
            continue
        for key, value in cfg.items():
            if value is None:
                continue  # Go: a null section leaves the earlier one
            existing = _key(result, key)
            low = key.lower()
            if low in ("inbounds", "outbounds") and existing is not None:
                if isinstance(result[existing], list) and isinstance(value, list):
                    if low == "inbounds":
                        result[existing] = _merge_inbounds(result[existing], value)
                    else:
                        result[existing] = _merge_outbounds(result[existing], value, name)
                    continue
            if existing is not None:
                del result[existing]
            result[key] = value
    return result


def confdir_files(directory: str) -> list[str]:
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise ConfigError(directory, f"cannot read config directory: {exc.strerror}") from None
    return [os.path.join(directory, n) for n in names if Path(n).suffix.lower() in _EXT]


def load(paths: Sequence[str], confdir: str | None = None, fmt: str | None = None) -> dict[str, Any]:
    """Read and merge every file; ``-confdir`` files come after ``-c`` files."""
    files = list(paths)
    if confdir:
        files += confdir_files(confdir)
    if not files:
        raise ConfigError("", "no config file given (use -c FILE or -confdir DIR)")
    return merge([read_file(p, fmt) for p in files], files)
