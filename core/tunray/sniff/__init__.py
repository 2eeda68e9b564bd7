"""Traffic sniffers: find the domain a flow is heading to from its first bytes (Xray-compatible).

Pure functions over bytes, no I/O.  Each takes the flow's data so far and returns a
:class:`SniffResult`, or raises :class:`NeedMoreData` (call again with more) or
:class:`NoClue` (not this protocol / no domain); nothing else escapes them.

    >>> sniff_http(b"GET / HTTP/1.1\\r\\nHost: Example.COM:8080\\r\\n\\r\\n")
    SniffResult(protocol='http1', domain='example.com')

TCP sniffers take the stream prefix.  The UDP sniffer takes one datagram or several
concatenated (Xray's convention); :class:`QuicSniffer` is the incremental per-datagram form.
"""

from __future__ import annotations

from collections.abc import Callable

from tunray.sniff.http import sniff_http
from tunray.sniff.quic import QuicSniffer, sniff_quic, sniff_quic_packets
from tunray.sniff.result import NeedMoreData, NoClue, SniffResult
from tunray.sniff.tls import server_name_from_client_hello, sniff_tls

Sniffer = Callable[[bytes], SniffResult]

TCP_SNIFFERS: dict[str, Sniffer] = {"http": sniff_http, "tls": sniff_tls}
UDP_SNIFFERS: dict[str, Sniffer] = {"quic": sniff_quic}

__all__ = [
    "TCP_SNIFFERS",
    "UDP_SNIFFERS",
    "NeedMoreData",
    "NoClue",
    "QuicSniffer",
    "SniffResult",
    "Sniffer",
    "server_name_from_client_hello",
    "sniff_http",
    "sniff_quic",
    "sniff_quic_packets",
    "sniff_tls",
]
