"""Domain patterns: Xray's strmatcher and rule-parser behaviours, plus scale."""

from __future__ import annotations

import random
import string

import pytest
from tunray.config.errors import ConfigError
from tunray.routing.domain import DomainMatcher, to_domain


def compile_(*patterns: str) -> DomainMatcher:
    return DomainMatcher.compile(list(patterns), "rules[0].domain")


def test_xray_domain_rule_table() -> None:
    # app/router condition_test: [substr example.com, domain google.com, regex ^facebook\.com$]
    m = compile_("example.com", "domain:google.com", r"regexp:^facebook\.com$")
    assert m.match("example.com")
    assert m.match("www.example.com.www")
    assert not m.match("example.co")
    assert m.match("www.google.com")
    assert m.match("facebook.com")
    assert not m.match("www.facebook.com")


def test_domain_kind_matches_name_and_subdomains_only() -> None:
    m = compile_("domain:example.com")
    assert m.match("www.example.com")
    assert m.match("example.com")
    assert m.match("a.b.c.example.com")
    for other in ("www.e3ample.com", "xample.com", "xexample.com", "example.com.cn"):
        assert not m.match(other), other


def test_full_matches_exactly() -> None:
    m = compile_("full:example.com")
    assert m.match("example.com")
    assert m.match("EXAMPLE.com")  # inputs are lower-cased
    assert not m.match("www.example.com")
    assert not m.match("example.co")


def test_regexp_is_searched_and_case_sensitive_on_lowered_input() -> None:
    assert compile_("regexp:example.com").match("examplexcom")
    assert compile_("regexp:ads").match("www.ADS.example")  # input lowered first
    assert not compile_("regexp:ADS").match("www.ADS.example")


def test_keyword_and_plain_are_substrings() -> None:
    m = compile_("keyword:goog", "baidu.com")
    assert m.match("www.google.com")
    assert m.match("xbaidu.com.cn")
    assert not m.match("bing.com")


def test_dotless() -> None:
    m = compile_("dotless:")
    assert m.match("localhost")
    assert not m.match("a.b")
    m = compile_("dotless:abc")
    assert m.match("xabcx")
    assert not m.match("abc.com")
    assert not m.match("xyz")
    with pytest.raises(ConfigError, match=r"rules\[0\]\.domain\[0\].*dot"):
        compile_("dotless:a.b")


def test_to_domain_normalisation() -> None:
    assert to_domain("eXAMPLE.公益") == "example.xn--55qw42g"
    with pytest.raises(ValueError):
        to_domain("{")
    with pytest.raises(ValueError):
        to_domain("Mijia Cloud")
    m = compile_("full:eXAMPLE.公益")
    assert m.match("example.xn--55qw42g")
    assert m.match("Example.公益")  # input normalised too


def test_bad_entries_name_their_index() -> None:
    with pytest.raises(ConfigError) as info:
        compile_("domain:ok.com", "Mijia Cloud")
    assert info.value.path == "rules[0].domain[1]"
    with pytest.raises(ConfigError) as info:
        compile_("regexp:(unclosed")
    assert info.value.path == "rules[0].domain[0]"
    with pytest.raises(ConfigError) as info:
        compile_("geosite:")
    assert info.value.path == "rules[0].domain[0]"
    with pytest.raises(ConfigError):
        compile_("geosite:cn@")
    with pytest.raises(ConfigError):
        compile_("geosite:cn@@ads")
    with pytest.raises(ConfigError):
        compile_("domain:")


def test_many_substrings_use_the_combined_regex_and_agree_with_naive() -> None:
    rng = random.Random(7)
    words = ["".join(rng.choice("abcdefgh") for _ in range(rng.randint(2, 6))) for _ in range(300)]
    m = DomainMatcher.compile([f"keyword:{w}" for w in words], "p")
    probes = ["".join(rng.choice("abcdefgh.") for _ in range(rng.randint(1, 20))) for _ in range(2000)]
    for p in probes:
        assert m.match(p) == any(w in p for w in words), p


def test_ten_thousand_rules_of_each_kind() -> None:
    rng = random.Random(1)

    def name() -> str:
        return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(5, 10))) + ".com"

    full = [name() for _ in range(10000)]
    dom = [name() for _ in range(10000)]
    m = DomainMatcher.compile([f"full:{d}" for d in full] + [f"domain:{d}" for d in dom], "p")
    assert len(m) == len(set(full)) + len(set(dom))
    assert all(m.match(d) for d in full[:500])
    assert all(m.match("www.x." + d) for d in dom[:500])
    assert not m.match("nothing-here.example.org")


def test_private_matcher() -> None:
    m = DomainMatcher.private()
    for d in ("router.lan", "foo.localhost", "x.home.arpa", "printer", "a.test"):
        assert m.match(d), d
    assert not m.match("example.com")
