from __future__ import annotations

import importlib.metadata

import pluggy
import tunray_vless.plugin
from tunray.plugin import PROJECT, spec
from tunray.plugin.registry import Registry


def test_entry_point_names_the_plugin_module() -> None:
    [ep] = [ep for ep in importlib.metadata.entry_points(group=PROJECT) if ep.name == "outbound_vless"]
    assert ep.value == "tunray_vless.plugin"
    assert ep.dist is not None and ep.dist.name == "tunray-outbound-vless"
    assert ep.load() is tunray_vless.plugin


def test_hook_matches_the_spec_and_registers_the_outbound() -> None:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(spec)
    pm.register(tunray_vless.plugin, name="outbound_vless")
    pm.check_pending()
    registry = Registry()
    pm.hook.tunray_register_types(registry=registry)
    from tunray_vless.outbound import VlessOutbound

    assert registry.outbounds == {"vless": VlessOutbound} and registry.transports == {}
