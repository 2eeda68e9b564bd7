"""What the ``dns`` outbound does with each query: Xray's ``rules`` and the legacy keys.

Rules (infra/conf/dns_proxy.go, proxy/dns/dns.go): each ``{action, qType, domain,
rCode}``; the first rule whose ``qType`` list (empty = any) and ``domain`` patterns
(plain entries are substrings; empty = any) both match decides.  Actions:

* ``hijack`` -- answer A/AAAA from tunray's resolver (``hosts``, servers, FakeDNS);
  any other type is answered like ``return``;
* ``direct`` -- forward the query unchanged to the upstream (the original server
  unless ``address``/``port``/``network`` rewrite it) and relay its answer;
* ``return`` -- answer at once with ``rCode`` and no records;
* ``drop`` -- no answer.

No rule matching: A/AAAA are hijacked, everything else gets an empty NOERROR answer.

Legacy keys (deprecated in Xray, still read, cannot be mixed with ``rules``):
``nonIPQuery`` (``reject`` default, ``drop``, ``skip``) and ``blockTypes`` become
``[blockTypes -> drop (reject: return REFUSED)], [A, AAAA -> hijack],
[any -> return REFUSED | drop | direct]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from tunray.config.errors import ConfigError, join
from tunray.dns.message import AAAA, NOERROR, REFUSED, A
from tunray.routing.domain import DomainMatcher
from tunray.routing.geodata import GeoAssets
from tunray.routing.ports import PortList


class Action(Enum):
    DIRECT = "direct"
    DROP = "drop"
    RETURN = "return"
    HIJACK = "hijack"


@dataclass(frozen=True, slots=True)
class Rule:
    action: Action
    qtypes: PortList | None = None
    domains: DomainMatcher | None = None
    rcode: int = NOERROR

    def matches(self, qtype: int, name: str) -> bool:
        if self.qtypes is not None and qtype not in self.qtypes:
            return False
        return self.domains is None or self.domains.match(name)


def decide(rules: list[Rule], qtype: int, name: str) -> tuple[Action, int]:
    for rule in rules:
        if rule.matches(qtype, name):
            return rule.action, rule.rcode
    if qtype in (A, AAAA):
        return Action.HIJACK, NOERROR
    return Action.RETURN, NOERROR


def _rule(raw: Any, path: str, assets: GeoAssets) -> Rule:
    if not isinstance(raw, dict):
        raise ConfigError(path, "expected an object {action, qType, domain, rCode}")
    fields = {str(k).lower(): (k, v) for k, v in raw.items()}
    akey, action = fields.get("action", ("action", None))
    try:
        act = Action(str(action).lower())
    except ValueError:
        raise ConfigError(join(path, akey), "expected one of 'direct', 'drop', 'return', 'hijack'") from None
    qtypes = None
    qkey, qtype = fields.get("qtype", ("qType", None))
    if qtype is not None:
        qtypes = PortList.parse(qtype, join(path, qkey))
    domains = None
    dkey, domain = fields.get("domain", ("domain", None))
    if domain is not None:
        domains = DomainMatcher.compile(
            [domain] if isinstance(domain, str) else domain, join(path, dkey), assets=assets
        )
    rkey, rcode = fields.get("rcode", ("rCode", 0))
    if isinstance(rcode, bool) or not isinstance(rcode, int) or not 0 <= rcode <= 65535:
        raise ConfigError(join(path, rkey), "expected a number 0-65535")
    return Rule(act, qtypes, domains, rcode & 0xF)


def build_rules(settings: Any, path: str) -> list[Rule]:
    """The rule list from ``rules`` or the legacy ``nonIPQuery``/``blockTypes``."""
    assets = GeoAssets()
    legacy = settings.nonIPQuery is not None or settings.blockTypes is not None
    if legacy:
        if settings.rules is not None:
            raise ConfigError(
                join(path, "rules"), "legacy nonIPQuery and blockTypes cannot be mixed with rules"
            )
        mode = settings.nonIPQuery or "reject"
        rules: list[Rule] = []
        if settings.blockTypes:
            for i, t in enumerate(settings.blockTypes):
                if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= 65535:
                    raise ConfigError(join(join(path, "blockTypes"), i), "expected a query type 0-65535")
            blocked = PortList([(t, t) for t in settings.blockTypes])
            if mode == "reject":
                rules.append(Rule(Action.RETURN, blocked, rcode=REFUSED))
            else:
                rules.append(Rule(Action.DROP, blocked))
        rules.append(Rule(Action.HIJACK, PortList([(A, A), (AAAA, AAAA)])))
        last = {
            "reject": Rule(Action.RETURN, rcode=REFUSED),
            "drop": Rule(Action.DROP),
            "skip": Rule(Action.DIRECT),
        }
        rules.append(last[mode])
        return rules
    raw = settings.rules or []
    return [_rule(r, join(join(path, "rules"), i), assets) for i, r in enumerate(raw)]
