"""The plugin manager: entry points, env controls, clashes and broken plugins."""

from __future__ import annotations

import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from tunray.plugin.manager import AUTOLOAD_ENV, BLOCK_ENV, PluginManager
from tunray.plugin.registry import PluginError
from tunray.plugin.spec import all_hook_names


def make_dist(root: Path, dist: str, module: str, source: str, ep_name: str | None = None) -> None:
    """A real installed distribution (dist-info + module) on a path importlib.metadata scans."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[tunray]\n{ep_name or module} = {module}\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("trtest_"):
            del sys.modules[name]


GOOD = """
from tunray import hookimpl
from tunray.outbounds.blackhole import BlackholeOutbound

class Nowhere(BlackholeOutbound):
    protocol = "nowhere"

@hookimpl
def tunray_register_types(registry):
    registry.add_outbound(Nowhere)
"""


def test_first_party_plugins_are_loaded() -> None:
    pm = PluginManager()
    dists = {info.distribution for info in pm.infos}
    assert {"tunray", "tunray-outbound-freedom"} <= dists
    assert "freedom" in pm.registry.outbounds and "blackhole" in pm.registry.outbounds
    assert pm.registry.owner("outbound protocol", "freedom").startswith("'outbound_freedom' from distribution tunray-outbound-freedom")


def test_entry_point_plugin_loads_and_can_be_blocked(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_dist(site, "trtest-good", "trtest_good", GOOD)
    assert "nowhere" in PluginManager().registry.outbounds
    monkeypatch.setenv(BLOCK_ENV, "foo, trtest_good")
    assert "nowhere" not in PluginManager().registry.outbounds
    monkeypatch.setenv(BLOCK_ENV, "trtest-good")  # by distribution name too
    assert "nowhere" not in PluginManager().registry.outbounds
    monkeypatch.delenv(BLOCK_ENV)
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    pm = PluginManager()
    assert "nowhere" not in pm.registry.outbounds and "freedom" not in pm.registry.outbounds
    assert "blackhole" in pm.registry.outbounds  # built-ins stay


def test_duplicate_protocol_names_both_distributions(site: Path) -> None:
    make_dist(site, "trtest-one", "trtest_one", GOOD)
    make_dist(site, "trtest-two", "trtest_two", GOOD)
    with pytest.raises(PluginError) as info:
        PluginManager()
    msg = str(info.value)
    assert "'nowhere' is registered twice" in msg
    assert "trtest-one 1.2.3" in msg and "trtest-two 1.2.3" in msg


def test_import_error_names_the_distribution(site: Path) -> None:
    make_dist(site, "trtest-broken", "trtest_broken", "raise RuntimeError('boom at import')\n")
    with pytest.raises(PluginError, match=r"'trtest_broken' from distribution trtest-broken 1.2.3 failed to import: RuntimeError: boom at import"):
        PluginManager()


def test_misspelt_hook_is_a_startup_error(site: Path) -> None:
    make_dist(
        site,
        "trtest-typo",
        "trtest_typo",
        "from tunray import hookimpl\n@hookimpl\ndef tunray_register_typez(registry):\n    pass\n",
    )
    with pytest.raises(PluginError, match=r"trtest-typo.*tunray_register_typez"):
        PluginManager()


def test_replace_overrides_a_builtin() -> None:
    from tunray import hookimpl
    from tunray.outbounds.blackhole import BlackholeOutbound

    class Quiet(BlackholeOutbound):
        pass

    mod = types.ModuleType("trtest_override")

    @hookimpl
    def tunray_register_types(registry: object) -> None:
        registry.add_outbound(Quiet, replace=True)  # type: ignore[attr-defined]

    mod.tunray_register_types = tunray_register_types  # type: ignore[attr-defined]
    pm = PluginManager(extra=[mod])
    assert pm.registry.outbounds["blackhole"] is Quiet


def test_flow_hooks_are_skipped_when_nobody_listens() -> None:
    assert PluginManager(autoload=False).observes_flows is False


def test_every_hook_is_prefixed_and_documented() -> None:
    from tunray.plugin import spec

    names = all_hook_names()
    assert len(names) >= 10
    for name in names:
        assert name.startswith("tunray_")
        assert (getattr(spec, name).__doc__ or "").strip(), f"{name} has no docstring"


WRONG_CLASS = """
from tunray import hookimpl
from tunray.outbounds.blackhole import BlackholeOutbound

class NotAStack(BlackholeOutbound):
    name = "notastack"

@hookimpl
def tunray_register_types(registry):
    registry.add_stack(NotAStack)
"""


def test_a_class_of_the_wrong_kind_fails_naming_the_distribution(site: Path) -> None:
    make_dist(site, "trtest-wrong", "trtest_wrong", WRONG_CLASS)
    with pytest.raises(PluginError) as info:
        PluginManager()
    message = str(info.value)
    assert "trtest-wrong 1.2.3" in message and "NotAStack" in message
    assert "not a subclass of tunray.stack.Stack" in message and "\n" not in message


@pytest.mark.parametrize(("method", "obj", "why"), [
    ("add_inbound", object, "not a subclass of tunray.inbound.Inbound"),
    ("add_outbound", "freedom", "not a subclass of tunray.outbound.Outbound"),
    ("add_transport", int, "not a subclass of tunray.transport.Layer"),
])
def test_every_registry_checks_its_base_class(method: str, obj: object, why: str) -> None:
    from tunray.plugin.registry import Registry

    registry = Registry(current_owner="'x' from distribution kit-x 0.1")
    with pytest.raises(PluginError, match=why) as info:
        getattr(registry, method)(obj)
    assert "kit-x 0.1" in str(info.value)


def test_a_stack_without_a_name_is_refused() -> None:
    from tunray.plugin.registry import Registry
    from tunray.stack import Stack

    class Nameless(Stack):  # abstract methods do not matter for registration
        pass

    with pytest.raises(PluginError, match="without a 'name' string"):
        Registry(current_owner="kit").add_stack(Nameless)
