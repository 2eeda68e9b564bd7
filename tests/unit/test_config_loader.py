"""Reading and merging config files as Xray does."""

from __future__ import annotations

from pathlib import Path

import pytest
from tunray.config.errors import ConfigError
from tunray.config.loader import load, merge, strip_json_comments


def test_comments_and_trailing_commas_are_removed_outside_strings() -> None:
    text = '{\n // line\n "a": "x//y#z", /* block\n spanning */ "b": [1, 2,], # shell\n}'
    out = strip_json_comments(text)
    assert out.count("\n") == text.count("\n")  # line numbers survive for error messages
    import json

    assert json.loads(out) == {"a": "x//y#z", "b": [1, 2]}


def test_formats_by_extension(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('{"log": {"loglevel": "debug"}} // c')
    (tmp_path / "b.yaml").write_text("outbounds:\n  - protocol: freedom\n    tag: direct\n")
    (tmp_path / "c.toml").write_text('[[inbounds]]\nprotocol = "tun"\ntag = "tun-in"\n')
    raw = load([str(tmp_path / n) for n in ("a.json", "b.yaml", "c.toml")])
    assert raw["log"] == {"loglevel": "debug"}
    assert raw["outbounds"][0]["protocol"] == "freedom"
    assert raw["inbounds"][0]["tag"] == "tun-in"


def test_merge_replaces_sections_and_merges_bounds_by_tag() -> None:
    a = {"log": {"loglevel": "debug"}, "outbounds": [{"tag": "a", "protocol": "freedom"}, {"tag": "b", "protocol": "blackhole"}]}
    b = {"LOG": {"loglevel": "error"}, "outbounds": [{"tag": "b", "protocol": "freedom"}, {"tag": "c", "protocol": "blackhole"}]}
    merged = merge([a, b], ["a.json", "b.json"])
    assert merged["LOG"] == {"loglevel": "error"} and "log" not in merged
    # Xray prepends a later file's new outbounds ("c"), so it becomes the default.
    assert [(o["tag"], o["protocol"]) for o in merged["outbounds"]] == [
        ("c", "blackhole"),
        ("a", "freedom"),
        ("b", "freedom"),
    ]


def _tags(items: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(o.get("tag", ""), o.get("protocol", "")) for o in items]


# Xray-core infra/conf/xray_test.go TestConfig_Override, the inbound/outbound cases, as
# (name, original, override, file name, expected).
XRAY_OVERRIDE_CASES = [
    (
        "replace/inbounds",
        {"inbounds": [{"tag": "pos0"}, {"protocol": "vmess", "tag": "pos1"}]},
        {"inbounds": [{"tag": "pos1", "protocol": "kcp"}]},
        "",
        {"inbounds": [("pos0", ""), ("pos1", "kcp")]},
    ),
    (
        "replace/inbounds-replaceall",
        {"inbounds": [{"tag": "pos0"}, {"protocol": "vmess", "tag": "pos1"}]},
        {"inbounds": [{"tag": "pos1", "protocol": "kcp"}, {"tag": "pos2", "protocol": "kcp"}]},
        "",
        {"inbounds": [("pos0", ""), ("pos1", "kcp"), ("pos2", "kcp")]},
    ),
    (
        "replace/notag-append",
        {"inbounds": [{}, {"protocol": "vmess"}]},
        {"inbounds": [{"tag": "pos1", "protocol": "kcp"}]},
        "",
        {"inbounds": [("", ""), ("", "vmess"), ("pos1", "kcp")]},
    ),
    (
        "replace/outbounds",
        {"outbounds": [{"tag": "pos0"}, {"protocol": "vmess", "tag": "pos1"}]},
        {"outbounds": [{"tag": "pos1", "protocol": "kcp"}]},
        "",
        {"outbounds": [("pos0", ""), ("pos1", "kcp")]},
    ),
    (
        "replace/outbounds-prepend",
        {"outbounds": [{"tag": "pos0"}, {"protocol": "vmess", "tag": "pos1"}, {"tag": "pos3"}]},
        {"outbounds": [{"tag": "pos1", "protocol": "kcp"}, {"tag": "pos2", "protocol": "kcp"}, {"tag": "pos4", "protocol": "kcp"}]},
        "config.json",
        {"outbounds": [("pos2", "kcp"), ("pos4", "kcp"), ("pos0", ""), ("pos1", "kcp"), ("pos3", "")]},
    ),
    (
        "replace/outbounds-append",
        {"outbounds": [{"tag": "pos0"}, {"protocol": "vmess", "tag": "pos1"}]},
        {"outbounds": [{"tag": "pos2", "protocol": "kcp"}]},
        "config_tail.json",
        {"outbounds": [("pos0", ""), ("pos1", "vmess"), ("pos2", "kcp")]},
    ),
]


@pytest.mark.parametrize(("orig", "over", "name", "want"), [c[1:] for c in XRAY_OVERRIDE_CASES], ids=[c[0] for c in XRAY_OVERRIDE_CASES])
def test_merge_matches_xray_override_cases(orig: dict, over: dict, name: str, want: dict) -> None:  # type: ignore[type-arg]
    merged = merge([orig, over], ["first.json", name])
    for key, expected in want.items():
        assert _tags(merged[key]) == expected


def test_merge_tag_key_is_case_insensitive_as_in_go() -> None:
    # Go's JSON decoder fills InboundDetourConfig.Tag from "Tag" too, so a later file's
    # {"Tag": "in"} replaces the earlier "in" instead of adding a duplicate.
    a = {"inbounds": [{"tag": "in", "protocol": "socks"}]}
    b = {"inbounds": [{"Tag": "in", "protocol": "http"}]}
    merged = merge([a, b], ["a.json", "b.json"])
    assert merged["inbounds"] == [{"Tag": "in", "protocol": "http"}]


def test_merge_untagged_replaces_first_untagged_and_null_keeps_section() -> None:
    a = {"log": {"loglevel": "info"}, "inbounds": [{"protocol": "socks"}, {"tag": "x", "protocol": "http"}]}
    b = {"log": None, "inbounds": [{"protocol": "mixed"}]}
    merged = merge([a, b], ["a.json", "b.json"])
    assert merged["log"] == {"loglevel": "info"}
    assert _tags(merged["inbounds"]) == [("", "mixed"), ("x", "http")]


def test_confdir_outbound_order_prepends_then_appends_for_the_marked_file(tmp_path: Path) -> None:
    (tmp_path / "00-base.json").write_text('{"outbounds": [{"tag": "direct", "protocol": "freedom"}]}')
    (tmp_path / "10-proxy.json").write_text('{"outbounds": [{"tag": "proxy", "protocol": "vless"}]}')
    (tmp_path / "20-block_TAIL.json").write_text('{"outbounds": [{"tag": "block", "protocol": "blackhole"}]}')
    # Xray tests the whole path it was given, so keep the marker out of the directory name.
    assert "tail" not in str(tmp_path).lower()
    raw = load([], str(tmp_path))
    assert [o["tag"] for o in raw["outbounds"]] == ["proxy", "direct", "block"]


def test_confdir_loads_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "10-log.json").write_text('{"log": {"loglevel": "info"}}')
    (tmp_path / "20-log.json").write_text('{"log": {"loglevel": "error"}}')
    (tmp_path / "notes.txt").write_text("ignored")
    assert load([], str(tmp_path))["log"]["loglevel"] == "error"


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("bad.json", '{"log": {', "invalid JSON at line 1"),
        ("bad.yaml", "a: [", "invalid YAML"),
        ("bad.toml", "a = ", "invalid TOML"),
        ("list.json", "[1, 2]", "top level must be an object"),
    ],
)
def test_unreadable_files_name_the_file(tmp_path: Path, name: str, text: str, fragment: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load([str(path)])
    assert str(info.value).startswith(str(path)) and fragment in str(info.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(["/nonexistent/tunray.json"])
