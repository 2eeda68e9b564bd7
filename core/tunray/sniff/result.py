"""What a sniffer returns, and the two ways it can decline.

Mapping to Xray-core (app/dispatcher/sniffer.go): Xray's ``ErrNoClue`` means "too short to
tell, ask again" and any other error means "not this protocol".  tunray names the outcomes by
what the caller should do:

- :class:`NeedMoreData` -- the bytes so far are a valid prefix of this protocol (or too short
  to tell); call again with a longer prefix.  Xray's ``ErrNoClue`` and
  ``ErrProtoNeedMoreData`` both land here.
- :class:`NoClue` -- this is not the protocol, or it is but carries no usable domain (a
  ClientHello without SNI, a request without Host).  Do not ask this sniffer again for the flow.
"""

from __future__ import annotations

from dataclasses import dataclass


class NoClue(Exception):
    """The data is not this protocol, or it names no domain; give up on this sniffer."""


class NeedMoreData(Exception):
    """The data could still be this protocol; retry with more bytes (or datagrams)."""


@dataclass(frozen=True, slots=True)
class SniffResult:
    """A sniffed flow: ``protocol`` is ``"http1"``, ``"tls"`` or ``"quic"``; ``domain`` is the
    host name (or IP literal, unbracketed) the client asked for."""

    protocol: str
    domain: str
