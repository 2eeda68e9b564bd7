"""TLS sniffer: the SNI host_name of a ClientHello, which may span several TLS records.

Theory of operation: handshake fragments are collected from consecutive handshake records
(record spanning, RFC 8446 §5.1) until the ClientHello's 4-byte handshake header says the
message is whole.  The ClientHello is then parsed from the bytes we have; running out of bytes
is :class:`NeedMoreData` while the message is still incomplete and :class:`NoClue` once it is
complete (it is malformed).  A prefix is parsed as far as it goes, so bytes that cannot start a
ClientHello are rejected early, but a name is only returned from a complete message (Xray does
the same; its captures expect "need more" while the SNI is already in the first QUIC packet).
``server_name_from_client_hello`` is shared with the QUIC sniffer, which feeds it the
contiguous prefix of the reassembled CRYPTO stream.

Xray's rules for the name: a byte <= 0x20 means the name was cut (QUIC reassembly with a hole)
and asks for more data; a trailing dot is invalid (RFC 6066 §3); no SNI at all is not sniffable.
"""

from __future__ import annotations

from tunray.sniff.result import NeedMoreData, NoClue, SniffResult

PROTOCOL = "tls"

CONTENT_HANDSHAKE = 0x16
HANDSHAKE_CLIENT_HELLO = 0x01
EXTENSION_SERVER_NAME = 0x0000
NAME_TYPE_HOST_NAME = 0
MAX_CLIENT_HELLO = 0x10000  # bytes of ClientHello body we are willing to wait for


class _Short(Exception):
    """Internal: the buffer ended before the field did."""


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise _Short
        out = self.buf[self.pos : end]
        self.pos = end
        return out

    def u8(self) -> int:
        if self.pos >= len(self.buf):
            raise _Short
        self.pos += 1
        return self.buf[self.pos - 1]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")


def _host_name(name: bytes) -> str:
    if not name:
        raise NoClue("empty SNI host_name")
    if min(name) <= 0x20:
        raise NeedMoreData("SNI host_name cut short")
    if name.endswith(b"."):
        raise NoClue("SNI host_name with trailing dot")
    if max(name) >= 0x7F:
        raise NoClue("non-ASCII SNI host_name")
    return name.decode("ascii")


def _server_name_extension(data: bytes) -> str | None:
    # struct { NameType name_type; opaque HostName<1..2^16-1>; } ServerName;
    # struct { ServerName server_name_list<1..2^16-1> } ServerNameList;   (RFC 6066 §3)
    r = _Reader(data)
    try:
        r = _Reader(r.take(r.u16()))
        while r.pos < len(r.buf):
            name_type = r.u8()
            name = r.take(r.u16())
            if name_type == NAME_TYPE_HOST_NAME:
                return _host_name(name)
    except _Short:
        raise NoClue("malformed server_name extension") from None
    return None


def _parse_body(body: bytes) -> str:
    # struct {
    #     ProtocolVersion legacy_version;              uint16, major 3
    #     Random random;                               32 bytes
    #     opaque legacy_session_id<0..32>;
    #     CipherSuite cipher_suites<2..2^16-2>;
    #     opaque legacy_compression_methods<1..2^8-1>;
    #     Extension extensions<8..2^16-1>;             { uint16 type; opaque data<0..2^16-1> }
    # } ClientHello;                                   (RFC 8446 §4.1.2)
    r = _Reader(body)
    if r.u8() != 3:
        raise NoClue("ClientHello legacy_version major is not 3")
    r.take(1 + 32)
    session_id_len = r.u8()
    if session_id_len > 32:
        raise NoClue("ClientHello session id longer than 32")
    r.take(session_id_len)
    suites_len = r.u16()
    if suites_len % 2:
        raise NoClue("odd cipher_suites length")
    r.take(suites_len)
    r.take(r.u8())
    end = r.pos + r.u16()
    while r.pos < end:
        ext_type = r.u16()
        data = r.take(r.u16())
        if ext_type == EXTENSION_SERVER_NAME:
            name = _server_name_extension(data)
            if name is not None:
                return name
    raise NoClue("ClientHello has no SNI host_name")


def server_name_from_client_hello(message: bytes) -> str:
    """Return the SNI host name of a (possibly still incomplete) ClientHello handshake message.

    *message* starts with the handshake header (type 1, uint24 length).  Raises
    :class:`NeedMoreData` if the name may follow in later bytes, :class:`NoClue` otherwise.
    """
    if not message:
        raise NeedMoreData("empty handshake")
    if message[0] != HANDSHAKE_CLIENT_HELLO:
        raise NoClue("handshake message is not a ClientHello")
    if len(message) < 4:
        raise NeedMoreData("partial handshake header")
    length = int.from_bytes(message[1:4], "big")
    if length > MAX_CLIENT_HELLO:
        raise NoClue("ClientHello too long")
    complete = len(message) >= 4 + length
    try:
        name = _parse_body(message[4 : 4 + length])
    except _Short:
        if complete:
            raise NoClue("malformed ClientHello") from None
        raise NeedMoreData("ClientHello incomplete") from None
    if not complete:
        # The name is already visible, but like Xray we only trust a whole ClientHello.
        raise NeedMoreData("ClientHello incomplete")
    return name


def _handshake_prefix(data: bytes) -> bytes:
    """Concatenate handshake fragments until one whole handshake message is present."""
    # struct { ContentType type; ProtocolVersion legacy_record_version;
    #          uint16 length; opaque fragment[length]; } TLSPlaintext;   (RFC 8446 §5.1)
    hs = bytearray()
    pos = 0
    while pos < len(data):
        if data[pos] != CONTENT_HANDSHAKE:
            raise NoClue("not a TLS handshake record")
        if pos + 1 < len(data) and data[pos + 1] != 3:
            raise NoClue("TLS record major version is not 3")
        if pos + 5 > len(data):
            break
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if length == 0:
            raise NoClue("empty TLS handshake record")
        hs += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if len(hs) >= 4 and len(hs) >= 4 + int.from_bytes(hs[1:4], "big"):
            break
        if len(hs) > MAX_CLIENT_HELLO + 4:
            raise NoClue("ClientHello too long")
    return bytes(hs)


def sniff_tls(data: bytes) -> SniffResult:
    """Sniff the SNI of a TLS ClientHello at the start of a TCP stream."""
    if not data:
        raise NeedMoreData("no data")
    return SniffResult(PROTOCOL, server_name_from_client_hello(_handshake_prefix(data)))
