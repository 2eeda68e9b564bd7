"""tunray's ``freedom`` outbound: send each flow straight to its destination.

Quick start::

    {"outbounds": [{"protocol": "freedom", "tag": "direct",
                    "settings": {"domainStrategy": "UseIPv4"},
                    "streamSettings": {"sockopt": {"mark": 255}}}]}
"""
