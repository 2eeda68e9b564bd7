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
    merged = merge([a, b])
    assert merged["LOG"] == {"loglevel": "error"} and "log" not in merged
    assert [(o["tag"], o["protocol"]) for o in merged["outbounds"]] == [
        ("a", "freedom"),
        ("b", "freedom"),
        ("c", "blackhole"),
    ]


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
