"""Domain matching with Xray's pattern syntax, compiled for many rules.

Theory of operation
-------------------
Patterns (``domain:``, ``full:``, ``keyword:``, ``regexp:``, ``dotless:``, ``geosite:``,
``ext:FILE:CODE``; a bare string takes the caller's default kind, substring for
routing) are sorted into four groups at compile time:

* **full** -- a ``set``; one lookup.
* **domain** (the name or any parent) -- a ``set`` of suffixes; matching walks the
  labels of the input, one set lookup per label (``a.b.c`` tries ``a.b.c``,
  ``b.c``, ``c``), so the cost is independent of the number of rules.
* **substring** -- a few are tested with ``in``; more are folded into one regex
  built from a character trie (shared prefixes become one branch, and a pattern that
  extends a shorter one is dropped because the shorter one already matches), so
  ``re`` walks the input once per start position instead of once per pattern.
* **regexp** -- one alternation ``(?:r1)|(?:r2)|...`` when Python accepts it
  combined, else one compiled regex each.  As in Xray (Go RE2), a regexp is
  case-sensitive and searched (not anchored) in the lower-cased domain.

Patterns are normalised like Xray's ``ToDomain``: IDNA labels become punycode,
letters are lower-cased, and anything outside letters, digits, ``-`` and ``.`` is an
error.  Inputs are lower-cased (and punycoded if needed) before matching.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from tunray.config.errors import ConfigError, join
from tunray.routing import geodata

if TYPE_CHECKING:
    from tunray.routing.geodata import GeoAssets

_NOT_LDH = re.compile(r"[^a-z0-9.\-]")
_FEW_SUBSTRINGS = 8

#: Xray's built-in private-domain list (used for ``geosite:private`` without a file).
PRIVATE_DOMAINS = (
    "domain:lan",
    "domain:localdomain",
    "domain:example",
    "domain:invalid",
    "domain:localhost",
    "domain:test",
    "domain:local",
    "domain:home.arpa",
    "domain:internal",
    "dotless:",
)

_Trie = dict[str, "_Trie"]

_KINDS = {"substr": geodata.SUBSTR, "regexp": geodata.REGEX, "domain": geodata.DOMAIN, "full": geodata.FULL}


def to_domain(pattern: str) -> str:
    """Xray's ``ToDomain``: punycode IDNA labels, lower-case, reject non-LDH characters."""
    if not pattern.isascii():
        labels = []
        for label in pattern.split("."):
            if label.isascii():
                labels.append(label)
            else:
                try:
                    labels.append("xn--" + label.encode("punycode").decode("ascii"))
                except UnicodeError as exc:
                    raise ValueError(f"cannot convert {label!r} to punycode: {exc}") from None
        pattern = ".".join(labels)
    pattern = pattern.lower()
    bad = _NOT_LDH.search(pattern)
    if bad:
        raise ValueError(f"character {bad.group()!r} is not allowed in a domain (letters, digits, '-', '.')")
    return pattern


def normalize_input(domain: str) -> str:
    """Lower-case a domain to match; punycode non-ASCII labels when possible."""
    d = domain.lower()
    if not d.isascii():
        try:
            d = to_domain(d)
        except ValueError:
            pass
    return d


def _trie_regex(patterns: Iterable[str]) -> str:
    """One regex matching any of *patterns* as a substring, shaped like their trie."""
    trie: _Trie = {}
    end = ""  # key marking "a pattern ends here"
    for p in sorted(set(patterns), key=len):
        node = trie
        for ch in p:
            if end in node:
                break  # a shorter pattern is a prefix: it matches whenever this one does
            node = node.setdefault(ch, {})
        else:
            node.clear()
            node[end] = {}

    def emit(node: _Trie) -> str:
        if end in node:
            return ""
        parts = []
        for ch in sorted(node):
            run = [re.escape(ch)]
            child = node[ch]
            while len(child) == 1 and end not in child:
                c2 = next(iter(child))
                run.append(re.escape(c2))
                child = child[c2]
            parts.append("".join(run) + emit(child))
        return parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"

    return emit(trie)


def _compile_regexps(sources: Sequence[str]) -> tuple[re.Pattern[str], ...]:
    if not sources:
        return ()
    if len(sources) > 1:
        try:
            return (re.compile("|".join(f"(?:{s})" for s in sources)),)
        except re.error:
            pass  # e.g. inline global flags or duplicate group names: keep them apart
    return tuple(re.compile(s) for s in sources)


class DomainMatcher:
    """Matches a domain against a compiled list of Xray domain patterns."""

    __slots__ = ("_full", "_regexps", "_substr_list", "_substr_re", "_suffix", "count")

    def __init__(
        self,
        full: Iterable[str] = (),
        suffixes: Iterable[str] = (),
        substrings: Iterable[str] = (),
        regexps: Sequence[str] = (),
    ) -> None:
        self._full = frozenset(full)
        self._suffix = frozenset(suffixes)
        subs = sorted(set(substrings))
        self._substr_list: tuple[str, ...] = ()
        self._substr_re: re.Pattern[str] | None = None
        if "" in subs:
            self._substr_list = ("",)  # matches everything
        elif len(subs) <= _FEW_SUBSTRINGS:
            self._substr_list = tuple(subs)
        else:
            self._substr_re = re.compile(_trie_regex(subs))
        self._regexps = _compile_regexps(list(dict.fromkeys(regexps)))
        self.count = len(self._full) + len(self._suffix) + len(subs) + len(regexps)

    @classmethod
    def compile(
        cls, patterns: Sequence[str], path: str, *, assets: GeoAssets | None = None, default: str = "substr"
    ) -> DomainMatcher:
        """Compile Xray patterns; a bad entry raises :class:`ConfigError` naming ``path[i]``.

        *default* is the kind of a bare pattern: ``substr`` (routing, sniffing, DNS
        server domains) or ``full`` (DNS hosts).
        """
        builder = _Builder(assets, _KINDS[default])
        if isinstance(patterns, str) or not isinstance(patterns, (list, tuple)):
            raise ConfigError(path, "expected an array of domain patterns")
        for i, pattern in enumerate(patterns):
            where = join(path, i)
            if not isinstance(pattern, str):
                raise ConfigError(where, "expected a domain pattern string")
            try:
                builder.add(pattern)
            except (ValueError, re.error, geodata.GeoDataError) as exc:
                raise ConfigError(where, f"invalid domain rule {pattern!r}: {exc}") from None
        return builder.build()

    @classmethod
    def private(cls) -> DomainMatcher:
        return cls.compile(list(PRIVATE_DOMAINS), "<private>")

    def match(self, domain: str) -> bool:
        d = domain.lower()
        if not d.isascii():
            d = normalize_input(d)
        if d in self._full:
            return True
        suffixes = self._suffix
        if suffixes:
            if d in suffixes:
                return True
            i = d.find(".")
            while i >= 0:
                if d[i + 1 :] in suffixes:
                    return True
                i = d.find(".", i + 1)
        if self._substr_re is not None:
            if self._substr_re.search(d) is not None:
                return True
        else:
            for s in self._substr_list:
                if s in d:
                    return True
        for r in self._regexps:
            if r.search(d) is not None:
                return True
        return False

    __call__ = match

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"<DomainMatcher {self.count} patterns>"


class _Builder:
    __slots__ = ("assets", "default", "full", "regexps", "substrings", "suffixes")

    def __init__(self, assets: GeoAssets | None, default: int) -> None:
        self.assets = assets
        self.default = default
        self.full: list[str] = []
        self.suffixes: list[str] = []
        self.substrings: list[str] = []
        self.regexps: list[str] = []

    def build(self) -> DomainMatcher:
        return DomainMatcher(self.full, self.suffixes, self.substrings, self.regexps)

    def add(self, rule: str) -> None:
        if rule.startswith("geosite:"):
            rule = "ext:geosite.dat:" + rule[len("geosite:") :]
        for ext in ("ext:", "ext-domain:", "ext-site:"):
            if rule.startswith(ext):
                self._add_site(rule[len(ext) :])
                return
        kind, value = self.default, rule
        if rule.startswith("regexp:"):
            kind, value = geodata.REGEX, rule[7:]
        elif rule.startswith("domain:"):
            kind, value = geodata.DOMAIN, rule[7:]
        elif rule.startswith("full:"):
            kind, value = geodata.FULL, rule[5:]
        elif rule.startswith("keyword:"):
            kind, value = geodata.SUBSTR, rule[8:]
        elif rule.startswith("dotless:"):
            sub = rule[8:]
            if "." in sub:
                raise ValueError("the text after dotless: must not contain a dot")
            kind = geodata.REGEX
            value = "^[^.]*" + sub + "[^.]*$" if sub else "^[^.]*$"
        if kind == geodata.REGEX:
            re.compile(value)  # report a bad expression at its own index
            self.regexps.append(value)
            return
        if not value:
            raise ValueError("empty pattern")
        self._add_plain(kind, to_domain(value))

    def _add_plain(self, kind: int, value: str) -> None:
        if kind == geodata.FULL:
            self.full.append(value)
        elif kind == geodata.DOMAIN:
            self.suffixes.append(value)
        else:
            self.substrings.append(value)

    def _add_site(self, spec: str) -> None:
        file, sep, code_attrs = spec.partition(":")
        if not sep:
            raise ValueError("expected FILE:CODE")
        if not file:
            raise ValueError("empty file name")
        if code_attrs.endswith("@") or "@@" in code_attrs:
            raise ValueError("empty attribute after @")
        code, _, attrs_text = code_attrs.partition("@")
        if not code:
            raise ValueError("empty code")
        attrs = [a.lower() for a in attrs_text.split("@")] if attrs_text else []
        assets = self.assets or geodata.GeoAssets()
        try:
            entries = assets.geosite(file, code)
        except geodata.GeoDataError:
            if code.upper() == "PRIVATE" and not attrs:
                for p in PRIVATE_DOMAINS:
                    self.add(p)
                return
            raise
        for d in entries:
            if attrs and not all(a in d.attrs for a in attrs):
                continue
            if d.type == geodata.REGEX:
                try:
                    re.compile(d.value)
                except re.error:
                    continue  # Xray logs and skips a broken entry
                self.regexps.append(d.value)
            elif d.type in (geodata.SUBSTR, geodata.DOMAIN, geodata.FULL) and d.value:
                self._add_plain(d.type, d.value.lower())
