"""Xray's stream transports for tunray: WebSocket, HTTPUpgrade and gRPC ("gun").

Quick start: install the distribution and select a transport in an outbound::

    # pyproject.toml of this distribution
    [project.entry-points.tunray]
    transport_std = "tunray_transports.plugin"

    "streamSettings": {"network": "ws", "wsSettings": {"path": "/ray?ed=2048"}}

The wire framings are sans-IO (:mod:`.wsframe`, :mod:`.http1`, :mod:`.grpcframe`);
:mod:`.websocket`, :mod:`.upgrade` and :mod:`.grpc` adapt them to a stream, and
:mod:`.layers` registers them as ``ws``/``websocket``, ``httpupgrade``, ``grpc``/``gun``.
"""
