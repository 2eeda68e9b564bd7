"""The TCP connection state machine as data (passive open only: every flow starts with the app's SYN).

``SYN_PENDING`` is tunray's addition for lazy handshakes: the SYN is known but not
answered until the driver accepts.  ``RESET`` and ``ABORT`` lead from every state to
``CLOSED``; any pair missing from :data:`TRANSITIONS` is a protocol error the caller
counts (it never raises out of the stack).
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    __hash__ = object.__hash__  # members are singletons; skips Enum's Python-level __hash__ (hot path)

    SYN_PENDING = "syn-pending"
    SYN_RCVD = "syn-received"
    ESTABLISHED = "established"
    CLOSE_WAIT = "close-wait"
    LAST_ACK = "last-ack"
    FIN_WAIT_1 = "fin-wait-1"
    FIN_WAIT_2 = "fin-wait-2"
    CLOSING = "closing"
    TIME_WAIT = "time-wait"
    CLOSED = "closed"


class Input(enum.Enum):
    __hash__ = object.__hash__

    ACCEPT = "accept"  # driver accepted: SYN-ACK goes out
    ACK_OF_SYN = "ack-of-syn"
    PEER_FIN = "peer-fin"
    APP_CLOSE = "app-close"  # our FIN is queued
    FIN_ACKED = "fin-acked"
    TIMEOUT = "timeout"  # TIME_WAIT / FIN_WAIT_2 expiry
    RESET = "reset"  # RST received, idle timeout, retransmission give-up
    ABORT = "abort"  # driver reset the flow


S = State
TRANSITIONS: dict[tuple[State, Input], State] = {
    (S.SYN_PENDING, Input.ACCEPT): S.SYN_RCVD,
    (S.SYN_RCVD, Input.ACK_OF_SYN): S.ESTABLISHED,
    (S.ESTABLISHED, Input.PEER_FIN): S.CLOSE_WAIT,
    (S.ESTABLISHED, Input.APP_CLOSE): S.FIN_WAIT_1,
    (S.CLOSE_WAIT, Input.APP_CLOSE): S.LAST_ACK,
    (S.LAST_ACK, Input.FIN_ACKED): S.CLOSED,
    (S.FIN_WAIT_1, Input.FIN_ACKED): S.FIN_WAIT_2,
    (S.FIN_WAIT_1, Input.PEER_FIN): S.CLOSING,
    (S.FIN_WAIT_2, Input.PEER_FIN): S.TIME_WAIT,
    (S.FIN_WAIT_2, Input.TIMEOUT): S.CLOSED,
    (S.CLOSING, Input.FIN_ACKED): S.TIME_WAIT,
    (S.TIME_WAIT, Input.TIMEOUT): S.CLOSED,
}
for _s in State:
    TRANSITIONS[(_s, Input.RESET)] = S.CLOSED
    TRANSITIONS[(_s, Input.ABORT)] = S.CLOSED

#: States in which the peer may still send data.
RECEIVING = frozenset((S.SYN_RCVD, S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2))
#: States in which we may still send data (our FIN not yet queued).
SENDING = frozenset((S.SYN_PENDING, S.SYN_RCVD, S.ESTABLISHED, S.CLOSE_WAIT))
#: States after our FIN was queued.
FIN_QUEUED = frozenset((S.FIN_WAIT_1, S.FIN_WAIT_2, S.CLOSING, S.LAST_ACK, S.TIME_WAIT))
