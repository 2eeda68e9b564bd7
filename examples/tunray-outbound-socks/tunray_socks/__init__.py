"""tunray-outbound-socks: Xray's ``socks`` outbound for tunray, as an out-of-tree plugin.

Quick start::

    # pyproject.toml
    [project.entry-points.tunray]
    outbound_socks = "tunray_socks.plugin"
"""
