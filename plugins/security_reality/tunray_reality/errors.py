"""Errors of the REALITY/TLS 1.3 client; all are :class:`~tunray.bytestream.StreamReset`.

A record that does not verify, an alert, or the connection ending without
``close_notify`` is a broken connection under a framing layer: the flow is reset.
"""

from __future__ import annotations

from tunray.bytestream import StreamReset


class TlsError(StreamReset):
    """A TLS 1.3 handshake or record-layer failure; the message says what."""


class TlsAlert(TlsError):
    """A protocol violation by the peer, or an alert it sent; ``alert`` is the TLS alert code."""

    def __init__(self, alert: int, message: str) -> None:
        super().__init__(message)
        self.alert = alert


class RealityRefused(TlsError):
    """The server's certificate is not REALITY's for our key: not our server (fail closed)."""
