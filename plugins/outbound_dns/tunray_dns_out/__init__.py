"""tunray's ``dns`` outbound: answer the DNS queries routing sends to it.

Quick start::

    {"outbounds": [{"protocol": "dns", "tag": "dns-out", "settings": {"nonIPQuery": "skip"}}],
     "routing": {"rules": [{"port": 53, "outboundTag": "dns-out"}]}}

    [project.entry-points.tunray]
    outbound_dns = "tunray_dns_out.plugin"
"""
