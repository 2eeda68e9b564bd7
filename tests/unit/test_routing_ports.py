"""Port lists as Xray parses them."""

from __future__ import annotations

import pytest
from tunray.config.errors import ConfigError
from tunray.routing.ports import PortList


def test_string_list() -> None:
    p = PortList.parse("53, 443, 1000-2000", "port")
    assert p.ranges() == [(53, 53), (443, 443), (1000, 2000)]
    assert 53 in p and 443 in p and 1000 in p and 1500 in p and 2000 in p
    assert 54 not in p and 999 not in p and 2001 not in p


def test_number_and_array() -> None:
    assert PortList.parse(123, "port").ranges() == [(123, 123)]
    p = PortList.parse([443, "1000-1100"], "port")
    assert 443 in p and 1100 in p and 1005 in p and 53 not in p
    sp = PortList.parse("123, 9993-9999", "sourcePort")
    assert 123 in sp and 9999 in sp and 9994 in sp and 53 not in sp


def test_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TR_PORTS", "80,8000-8080")
    p = PortList.parse("env:TR_PORTS", "port")
    assert 80 in p and 8080 in p and 81 not in p
    monkeypatch.setenv("TR_PORT", "22")
    assert 22 in PortList.parse("env:TR_PORT, 25", "port")
    monkeypatch.delenv("TR_MISSING", raising=False)
    with pytest.raises(ConfigError, match="TR_MISSING"):
        PortList.parse("env:TR_MISSING", "port")


@pytest.mark.parametrize(
    ("raw", "where"),
    [("70000", "rules[0].port"), ("2000-1000", "rules[0].port"), ("abc", "rules[0].port"), ([1, True], "rules[0].port[1]"),
     ([1, -1], "rules[0].port[1]"), ({}, "rules[0].port"), ("", "rules[0].port")],
)  # fmt: skip
def test_errors_name_the_path(raw: object, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        PortList.parse(raw, "rules[0].port")
    assert info.value.path == where
