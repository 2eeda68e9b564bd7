"""Routing balancers: ``{tag, selector, strategy: {type}, fallbackTag}``.

The selector is a list of tag *prefixes*; the candidates are the outbound tags that
start with any of them, sorted, fixed at start-up.  ``random`` (the default) and
``roundRobin`` pick among them; with no candidate the balancer answers its
``fallbackTag``, or None (the caller then uses the default outbound, as Xray does).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from tunray.config.errors import ConfigError, NotSupported, join

STRATEGIES = {"random": "random", "roundrobin": "roundRobin"}
UNSUPPORTED_STRATEGIES = {"leastping": "leastPing", "leastload": "leastLoad"}


class Balancer:
    __slots__ = ("_next", "candidates", "fallback", "strategy", "tag")

    def __init__(
        self, tag: str, candidates: Sequence[str], strategy: str = "random", fallback: str = ""
    ) -> None:
        self.tag = tag
        self.candidates = tuple(candidates)
        self.strategy = strategy
        self.fallback = fallback
        self._next = 0

    def pick(self) -> str | None:
        c = self.candidates
        if not c:
            return self.fallback or None
        if self.strategy == "roundRobin":
            i = self._next % len(c)
            self._next = i + 1
            return c[i]
        return c[0] if len(c) == 1 else random.choice(c)

    @classmethod
    def from_config(cls, raw: Any, path: str, outbound_tags: Sequence[str]) -> Balancer:
        if not isinstance(raw, dict):
            raise ConfigError(path, "expected a balancer object {tag, selector, strategy}")
        fields = {str(k).lower(): (k, v) for k, v in raw.items()}
        key, tag = fields.get("tag", ("tag", None))
        if not isinstance(tag, str) or not tag:
            raise ConfigError(join(path, key), "a balancer needs a non-empty tag")
        key, selector = fields.get("selector", ("selector", None))
        if isinstance(selector, str):
            selector = [selector]
        if not isinstance(selector, list) or not selector or not all(isinstance(s, str) for s in selector):
            raise ConfigError(join(path, key), "expected a non-empty array of outbound tag prefixes")
        strategy = "random"
        key, strat = fields.get("strategy", ("strategy", None))
        if strat is not None:
            if not isinstance(strat, dict):
                raise ConfigError(join(path, key), 'expected an object like {"type": "random"}')
            skey, stype = next(((k, v) for k, v in strat.items() if str(k).lower() == "type"), ("type", None))
            if stype is not None:
                if not isinstance(stype, str):
                    raise ConfigError(join(join(path, key), skey), "expected a strategy name")
                low = stype.lower()
                if low in UNSUPPORTED_STRATEGIES:
                    raise NotSupported(
                        join(join(path, key), skey), f"balancer strategy {UNSUPPORTED_STRATEGIES[low]!r}"
                    )
                if low not in STRATEGIES and low != "":
                    raise ConfigError(
                        join(join(path, key), skey),
                        f"unknown balancer strategy {stype!r} (expected random or roundRobin)",
                    )
                strategy = STRATEGIES.get(low, "random")
        key, fallback = fields.get("fallbacktag", ("fallbackTag", ""))
        if fallback is None:
            fallback = ""
        if not isinstance(fallback, str):
            raise ConfigError(join(path, key), "expected an outbound tag")
        candidates = sorted({t for t in outbound_tags if t and any(t.startswith(p) for p in selector)})
        return cls(tag, candidates, strategy, fallback)

    def __repr__(self) -> str:
        return f"<Balancer {self.tag} {self.strategy} {list(self.candidates)}>"
