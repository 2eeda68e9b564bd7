"""tunray's TUN inbound (Xray ``"protocol": "tun"``).

Quick start::

    # config.json
    {"inbounds": [{"protocol": "tun", "settings": {"gateway": ["172.19.0.1/30"],
                   "autoSystemRoutingTable": ["203.0.113.0/24"]}}],
     "outbounds": [{"protocol": "freedom"}]}

    $ tunray run -c config.json        # needs CAP_NET_ADMIN

The distribution registers :class:`tunray_tun.inbound.TunInbound` through the
``tunray`` entry point ``inbound_tun = "tunray_tun.plugin"``.  Packets are turned into
flows by a registered stack (``settings.stack``, default ``"python"``).
"""

from __future__ import annotations

__all__: list[str] = []
