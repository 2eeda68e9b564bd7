"""SOCKS 4, 4a and 5 server handshakes and SOCKS5 UDP framing, sans-IO.

Feed the client's bytes to :meth:`SocksHandshake.receive`; it returns events: ``Send``
(bytes to write back), then exactly one ``Request`` (CONNECT or UDP ASSOCIATE, with
the user when a password was checked) or ``Refuse`` (reply bytes already queued in a
preceding ``Send``; the reason for the log).  Bytes past the request stay in
:attr:`SocksHandshake.leftover`.  Nothing here reads a clock or a socket.

Wire formats (RFC 1928, RFC 1929, SOCKS4 and 4a)::

    SOCKS5 greeting     VER=5 NMETHODS METHODS...            -> VER=5 METHOD
    RFC 1929 auth       VER=1 ULEN UNAME PLEN PASSWD           -> VER=1 STATUS (0 ok)
    SOCKS5 request      VER=5 CMD RSV=0 ATYP DST.ADDR DST.PORT -> VER=5 REP RSV ATYP BND.ADDR BND.PORT
    ATYP                1 = IPv4 (4 bytes), 3 = domain (LEN + name), 4 = IPv6 (16 bytes)
    SOCKS4(a) request   VER=4 CMD DSTPORT(2) DSTIP(4) USERID NUL [DOMAIN NUL if DSTIP=0.0.0.x]
                        -> 0 REP(90 granted, 91 rejected) PORT(2) IP(4)
    SOCKS5 UDP datagram RSV(2)=0 FRAG=0 ATYP DST.ADDR DST.PORT DATA

Xray's rules kept here: SOCKS4 is refused when a password is required; CONNECT, and the
Tor RESOLVE commands (0xF0/0xF1), are CONNECT; UDP ASSOCIATE only when ``udp`` is on;
BIND is "command not supported"; fragmented UDP datagrams are dropped.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass

from tunray.net.address import Destination, Host, Network, parse_host

V4, V5 = 4, 5
CMD_CONNECT, CMD_BIND, CMD_UDP = 1, 2, 3
CMD_TOR_RESOLVE, CMD_TOR_RESOLVE_PTR = 0xF0, 0xF1
AUTH_NONE, AUTH_PASSWORD, AUTH_NO_MATCH = 0x00, 0x02, 0xFF
REP_OK, REP_FAILURE, REP_HOST_UNREACHABLE, REP_CMD_UNSUPPORTED = 0x00, 0x01, 0x04, 0x07
SOCKS4_GRANTED, SOCKS4_REJECTED = 90, 91
ATYP_V4, ATYP_DOMAIN, ATYP_V6 = 1, 3, 4
MAX_HANDSHAKE = 1024  # a SOCKS handshake is at most ~520 bytes; more is not SOCKS


class ProtocolError(ValueError):
    """Malformed SOCKS bytes."""


class State(enum.Enum):
    # Members are singletons compared by identity: hashing by identity is exact, and
    # skips Enum.__hash__ (a Python-level call; a handshake hashes states ~9 times).
    __hash__ = object.__hash__

    START = "start"
    METHODS = "methods"
    PASSWORD = "password"
    REQUEST5 = "request5"
    REQUEST4 = "request4"
    DONE = "done"


class Input(enum.Enum):
    __hash__ = object.__hash__  # as State's

    V4 = "socks4 request"
    V5 = "socks5 greeting"
    NO_AUTH = "no auth needed"
    AUTH = "password needed"
    AUTH_OK = "password accepted"
    REQUEST = "request"
    REFUSE = "refuse"


#: The handshake's state machine: a missing pair is a protocol error.
TRANSITIONS: dict[tuple[State, Input], State] = {
    (State.START, Input.V4): State.REQUEST4,
    (State.START, Input.V5): State.METHODS,
    (State.METHODS, Input.NO_AUTH): State.REQUEST5,
    (State.METHODS, Input.AUTH): State.PASSWORD,
    (State.METHODS, Input.REFUSE): State.DONE,
    (State.PASSWORD, Input.AUTH_OK): State.REQUEST5,
    (State.PASSWORD, Input.REFUSE): State.DONE,
    (State.REQUEST5, Input.REQUEST): State.DONE,
    (State.REQUEST5, Input.REFUSE): State.DONE,
    (State.REQUEST4, Input.REQUEST): State.DONE,
    (State.REQUEST4, Input.REFUSE): State.DONE,
}


# Module-level names for the members: an Enum class attribute lookup goes through a
# descriptor (~0.3 µs each), and a handshake does dozens (measured: connections/s).
_START, _METHODS, _PASSWORD, _REQUEST5, _REQUEST4, _DONE = (
    State.START, State.METHODS, State.PASSWORD, State.REQUEST5, State.REQUEST4, State.DONE
)
_IN_V4, _IN_V5, _IN_NO_AUTH, _IN_AUTH, _IN_AUTH_OK, _IN_REQUEST, _IN_REFUSE = (
    Input.V4, Input.V5, Input.NO_AUTH, Input.AUTH, Input.AUTH_OK, Input.REQUEST, Input.REFUSE
)


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes


@dataclass(frozen=True, slots=True)
class Request:
    version: int
    udp: bool
    destination: Destination
    user: str = ""


@dataclass(frozen=True, slots=True)
class Refuse:
    reason: str


Event = Send | Request | Refuse


def encode_address(host: Host, port: int) -> bytes:
    """``ATYP ADDR PORT`` as SOCKS5 writes it."""
    if isinstance(host, ipaddress.IPv4Address):
        return bytes((ATYP_V4,)) + host.packed + port.to_bytes(2, "big")
    if isinstance(host, ipaddress.IPv6Address):
        if host.ipv4_mapped is not None:
            return bytes((ATYP_V4,)) + host.ipv4_mapped.packed + port.to_bytes(2, "big")
        return bytes((ATYP_V6,)) + host.packed + port.to_bytes(2, "big")
    name = host.encode("idna") if not host.isascii() else host.encode()
    if len(name) > 255:
        raise ProtocolError("domain longer than 255 bytes")
    return bytes((ATYP_DOMAIN, len(name))) + name + port.to_bytes(2, "big")


def decode_address(buf: bytes | bytearray | memoryview, at: int) -> tuple[Host, int, int] | None:
    """Parse ``ATYP ADDR PORT`` at *at*: (host, port, end) or None if incomplete."""
    if len(buf) <= at:
        return None
    atyp = buf[at]
    if atyp == ATYP_V4:
        end = at + 1 + 4 + 2
        if len(buf) < end:
            return None
        host: Host = ipaddress.IPv4Address(bytes(buf[at + 1 : at + 5]))
    elif atyp == ATYP_V6:
        end = at + 1 + 16 + 2
        if len(buf) < end:
            return None
        host = ipaddress.IPv6Address(bytes(buf[at + 1 : at + 17]))
    elif atyp == ATYP_DOMAIN:
        if len(buf) < at + 2:
            return None
        n = buf[at + 1]
        end = at + 2 + n + 2
        if len(buf) < end:
            return None
        try:
            host = parse_host(bytes(buf[at + 2 : at + 2 + n]).decode())
        except UnicodeDecodeError:
            raise ProtocolError("domain is not valid UTF-8") from None
        if not host:
            raise ProtocolError("empty domain")
    else:
        raise ProtocolError(f"unknown address type {atyp}")
    return host, int.from_bytes(buf[end - 2 : end], "big"), end


def reply5(code: int, host: Host, port: int) -> bytes:
    return bytes((V5, code, 0)) + encode_address(host, port)


def reply4(code: int) -> bytes:
    return bytes((0, code, 0, 0, 0, 0, 0, 0))


ZERO = ipaddress.IPv4Address(0)
#: Replies the inbound sends once the outbound's fate is known (CONNECT).
SUCCESS4 = reply4(SOCKS4_GRANTED)
REFUSED4 = reply4(SOCKS4_REJECTED)
REFUSED5 = reply5(REP_HOST_UNREACHABLE, ZERO, 0)


class SocksHandshake:
    """One server-side SOCKS handshake; see the module docstring."""

    def __init__(self, accounts: dict[str, str] | None = None, *, udp: bool = False) -> None:
        self.accounts = accounts or {}
        self.udp = udp
        self.state = _START
        self.user = ""
        self._buf = bytearray()

    @property
    def leftover(self) -> bytes:
        """Bytes received past the request (the app's first payload)."""
        return bytes(self._buf)

    @property
    def done(self) -> bool:
        return self.state is _DONE

    def _go(self, event: Input) -> None:
        try:
            self.state = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise ProtocolError(f"{event.value} in state {self.state.value}") from None

    def receive(self, data: bytes) -> list[Event]:
        if self.state is _DONE:
            raise ProtocolError("handshake already finished")
        self._buf += data
        events: list[Event] = []
        state = self.state
        while state is not _DONE:
            if not _PARSERS[state](self, events) or self.state is state:
                break
            state = self.state
        if state is not _DONE and len(self._buf) > MAX_HANDSHAKE:
            raise ProtocolError("handshake too long")
        return events

    # --- one parser per state; each consumes what it parsed and returns False if incomplete ---

    def _on_start(self, events: list[Event]) -> bool:
        if not self._buf:
            return False
        version = self._buf[0]
        if version == V5:
            self._go(_IN_V5)
        elif version == V4:
            self._go(_IN_V4)
        else:
            raise ProtocolError(f"unknown SOCKS version {version}")
        return True

    def _on_methods(self, events: list[Event]) -> bool:
        if len(self._buf) < 2 or len(self._buf) < 2 + self._buf[1]:
            return False
        methods = bytes(self._buf[2 : 2 + self._buf[1]])
        del self._buf[: 2 + len(methods)]
        wanted = AUTH_PASSWORD if self.accounts else AUTH_NONE
        if wanted not in methods:
            events += (Send(bytes((V5, AUTH_NO_MATCH))), Refuse("no matching auth method"))
            self._go(_IN_REFUSE)
            return True
        events.append(Send(bytes((V5, wanted))))
        self._go(_IN_AUTH if self.accounts else _IN_NO_AUTH)
        return True

    def _on_password(self, events: list[Event]) -> bool:
        b = self._buf
        if len(b) < 2 or len(b) < 3 + b[1] or len(b) < 3 + b[1] + b[2 + b[1]]:
            return False
        ulen = b[1]
        plen = b[2 + ulen]
        user = bytes(b[2 : 2 + ulen]).decode(errors="replace")
        password = bytes(b[3 + ulen : 3 + ulen + plen]).decode(errors="replace")
        del b[: 3 + ulen + plen]
        if self.accounts.get(user) != password or user not in self.accounts:
            events += (Send(b"\x01\x01"), Refuse(f"invalid username or password for {user!r}"))
            self._go(_IN_REFUSE)
            return True
        self.user = user
        events.append(Send(b"\x01\x00"))
        self._go(_IN_AUTH_OK)
        return True

    def _on_request5(self, events: list[Event]) -> bool:
        b = self._buf
        if len(b) < 4:
            return False
        if b[0] != V5:
            raise ProtocolError(f"request version {b[0]}, expected 5")
        cmd = b[1]
        if cmd == CMD_UDP and not self.udp:
            events += (Send(reply5(REP_CMD_UNSUPPORTED, ZERO, 0)), Refuse("UDP is not enabled (settings.udp)"))
            self._go(_IN_REFUSE)
            return True
        if cmd not in (CMD_CONNECT, CMD_UDP, CMD_TOR_RESOLVE, CMD_TOR_RESOLVE_PTR):
            what = "BIND is" if cmd == CMD_BIND else f"command {cmd} is"
            events += (Send(reply5(REP_CMD_UNSUPPORTED, ZERO, 0)), Refuse(f"{what} not supported"))
            self._go(_IN_REFUSE)
            return True
        parsed = decode_address(b, 3)
        if parsed is None:
            return False
        host, port, end = parsed
        del b[:end]
        udp = cmd == CMD_UDP
        dest = Destination(Network.UDP if udp else Network.TCP, host, port)
        events.append(Request(V5, udp, dest, self.user))
        self._go(_IN_REQUEST)
        return True

    def _on_request4(self, events: list[Event]) -> bool:
        b = self._buf
        end_user = b.find(0, 8)
        if len(b) < 9 or end_user < 0:
            return False
        cmd = b[1]
        port = int.from_bytes(b[2:4], "big")
        ip = bytes(b[4:8])
        end = end_user + 1
        host: Host = ipaddress.IPv4Address(ip)
        if ip[:3] == b"\0\0\0" and ip[3] != 0:  # SOCKS4a: the domain follows the user id
            end_domain = b.find(0, end)
            if end_domain < 0:
                return False
            host = parse_host(bytes(b[end:end_domain]).decode(errors="replace"))
            end = end_domain + 1
        del b[:end]
        if self.accounts:
            events += (Send(REFUSED4), Refuse("SOCKS4 is not allowed when a password is required"))
            self._go(_IN_REFUSE)
            return True
        if cmd != CMD_CONNECT:
            events += (Send(REFUSED4), Refuse(f"SOCKS4 command {cmd} is not supported"))
            self._go(_IN_REFUSE)
            return True
        events.append(Request(V4, False, Destination(Network.TCP, host, port)))
        self._go(_IN_REQUEST)
        return True


#: The parser for each state (a table, not a getattr per step).
_PARSERS: dict[State, Callable[[SocksHandshake, list[Event]], bool]] = {
    _START: SocksHandshake._on_start,
    _METHODS: SocksHandshake._on_methods,
    _PASSWORD: SocksHandshake._on_password,
    _REQUEST5: SocksHandshake._on_request5,
    _REQUEST4: SocksHandshake._on_request4,
}


def decode_udp(datagram: bytes) -> tuple[Destination, bytes]:
    """Split a SOCKS5 UDP datagram into (destination, payload); raise ProtocolError."""
    if len(datagram) < 5:
        raise ProtocolError("UDP datagram too short")
    if datagram[2] != 0:
        raise ProtocolError("fragmented UDP datagram")
    parsed = decode_address(datagram, 3)
    if parsed is None:
        raise ProtocolError("truncated UDP header")
    host, port, end = parsed
    return Destination(Network.UDP, host, port), datagram[end:]


_UDP_HEADER_V4 = struct.Struct("!3xB4sH")


def encode_udp(source: Destination, payload: bytes) -> bytes:
    """A SOCKS5 UDP datagram carrying *payload* from *source*."""
    host = source.host
    if isinstance(host, ipaddress.IPv4Address):
        return _UDP_HEADER_V4.pack(ATYP_V4, host.packed, source.port) + payload
    return b"\0\0\0" + encode_address(host, source.port) + payload
