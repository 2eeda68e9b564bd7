"""tunray's listening inbounds: Xray ``socks``/``mixed``, ``http``, ``dokodemo-door``/``tunnel``.

Quick start::

    # config.json: a local SOCKS5 (and HTTP, same port) proxy, as Xray's client examples start
    {"inbounds": [{"protocol": "socks", "listen": "127.0.0.1", "port": 10808, "settings": {"udp": true}}],
     "outbounds": [{"protocol": "freedom"}]}

    $ tunray run -c config.json        # then: curl --socks5-hostname 127.0.0.1:10808 http://...

Registered through the ``tunray`` entry point ``inbound_local = "tunray_local.plugin"``.
"""

from __future__ import annotations

__all__: list[str] = []
