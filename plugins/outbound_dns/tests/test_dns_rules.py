"""The dns outbound's rule table: Xray's ``rules`` and the legacy ``nonIPQuery``/``blockTypes`` mapping."""

from __future__ import annotations

from typing import Any

import pytest
from tunray.config.errors import ConfigError
from tunray.dns.message import AAAA, MX, NOERROR, REFUSED, TXT, A
from tunray_dns_out.outbound import DNSOutbound
from tunray_dns_out.rules import Action, build_rules, decide


def rules(settings: dict[str, Any]) -> Any:
    return build_rules(DNSOutbound.settings_schema.parse(settings, "settings"), "settings")


def test_no_rules_hijacks_ip_queries_and_answers_others_empty() -> None:
    table = rules({})
    assert decide(table, A, "x.test") == (Action.HIJACK, NOERROR)
    assert decide(table, AAAA, "x.test") == (Action.HIJACK, NOERROR)
    assert decide(table, TXT, "x.test") == (Action.RETURN, NOERROR)


@pytest.mark.parametrize(
    ("settings", "txt", "aaaa"),
    [
        ({"nonIPQuery": "reject"}, (Action.RETURN, REFUSED), (Action.HIJACK, NOERROR)),
        ({"nonIPQuery": "drop"}, (Action.DROP, NOERROR), (Action.HIJACK, NOERROR)),
        ({"nonIPQuery": "skip"}, (Action.DIRECT, NOERROR), (Action.HIJACK, NOERROR)),
        ({"blockTypes": [28]}, (Action.RETURN, REFUSED), (Action.RETURN, REFUSED)),  # reject is the default mode
        ({"nonIPQuery": "skip", "blockTypes": [28, 16]}, (Action.DROP, NOERROR), (Action.DROP, NOERROR)),
        ({"nonIPQuery": "drop", "blockTypes": [28]}, (Action.DROP, NOERROR), (Action.DROP, NOERROR)),
    ],
)
def test_legacy_keys_map_as_in_xray(settings: dict[str, Any], txt: tuple[Action, int], aaaa: tuple[Action, int]) -> None:
    table = rules(settings)
    assert decide(table, TXT, "x.test") == txt
    assert decide(table, AAAA, "x.test") == aaaa
    assert decide(table, A, "x.test") == (Action.HIJACK, NOERROR)


def test_rules_match_qtype_and_domain_first_wins() -> None:
    table = rules({"rules": [
        {"action": "drop", "domain": "ads"},  # plain entries are substrings, as in Xray
        {"action": "return", "qType": "15-16", "rCode": 3},
        {"action": "direct", "domain": ["domain:corp.test"]},
    ]})  # fmt: skip
    assert decide(table, A, "ads.example.test") == (Action.DROP, NOERROR)
    assert decide(table, MX, "x.test") == (Action.RETURN, 3)
    assert decide(table, TXT, "x.test") == (Action.RETURN, 3)
    assert decide(table, A, "db.corp.test") == (Action.DIRECT, NOERROR)
    assert decide(table, A, "x.test") == (Action.HIJACK, NOERROR)


@pytest.mark.parametrize(
    ("settings", "path"),
    [
        ({"rules": [{"action": "forward"}]}, "settings.rules[0].action"),
        ({"rules": [{"action": "drop", "qType": "x"}]}, "settings.rules[0].qType"),
        ({"rules": [{"action": "return", "rCode": 70000}]}, "settings.rules[0].rCode"),
        ({"rules": [], "nonIPQuery": "drop"}, "settings.rules"),
        ({"nonIPQuery": "forward"}, "settings.nonIPQuery"),
        ({"blockTypes": [70000]}, "settings.blockTypes[0]"),
    ],
)
def test_bad_settings_name_their_path(settings: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        rules(settings)
    assert info.value.path == path, str(info.value)
