"""A TLS client stream over another stream, built on ``ssl.MemoryBIO`` + ``SSLObject``.

Theory of operation.  Bytes read from the inner stream go into the *incoming* BIO;
``SSLObject.read`` turns whole records into plaintext; what OpenSSL wants to send
collects in the *outgoing* BIO and is flushed to the inner stream after every call.
The two directions may run in two tasks: every ``SSLObject`` call is synchronous, so
they never interleave, and each flush hands all pending bytes to the inner stream in
one synchronous ``write`` call, so record order is kept.

Why not ``loop.start_tls``: XTLS Vision must leave TLS at an exact record boundary
and read the raw socket from there.  OpenSSL (read-ahead off, the default) takes a
record's bytes from the BIO only when it decrypts that record, so at any moment the
stream knows three things:

* plaintext decrypted but not yet returned (``SSLObject.pending()``),
* bytes received but not yet decrypted (left in the incoming BIO),
* the inner stream, positioned right after those bytes.

:meth:`TlsStream.detach_raw` hands all three over and ends TLS *reading* (writing
through TLS stays possible: a Vision client may keep its uplink inside TLS).
:meth:`TlsStream.read_record` returns at most one record's plaintext so a caller can
stop exactly at a boundary; :meth:`TlsStream.read` gathers several records.

:class:`TlsStream` is a :class:`tunray.bytestream.RecordStream` (``tls_version``,
``alpn``, ``read_record``, ``detach_raw``, ``inner``), the core protocol XTLS Vision
uses.  Ends: ``close_notify`` (or, as Go peers do, a bare FIN) is EOF; a reset of the
inner stream is raised as :class:`~tunray.bytestream.StreamReset`; a record-layer
failure is :class:`TlsError`.

The client's last handshake flight (TLS 1.3: its Finished; a resumed TLS 1.2 session:
ChangeCipherSpec and Finished) is not sent by :func:`handshake`: it stays in the
outgoing BIO and leaves with the first write, in the same segment as the first request
bytes (a VLESS header and payload), as TLS 1.3 allows.  That is one send, one segment
and one wake-up of the server less per connection; the server cannot answer before
the request anyway.  Every operation that could wait for the server (a read), every
write and ``write_eof`` flush it first, so nothing waits on a held flight; a stream
closed before it wrote anything never sends it (the handshake was of no use then).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

from tunray.bytestream import ByteStream, RecordStream, StreamClosed

CHUNK = 256 * 1024
_RECORD = 16 * 1024 + 256


class TlsError(ConnectionError):
    """A TLS handshake or record-layer failure; the message says what and with whom."""


class TlsStream(RecordStream):
    """See the module docstring.  Create with :func:`handshake`."""

    __slots__ = (
        "_alpn",
        "_close_notify_due",
        "_closed",
        "_detached",
        "_in",
        "_inner",
        "_obj",
        "_on_session",
        "_out",
        "_version",
        "_write_closed",
    )

    def __init__(
        self, inner: ByteStream, obj: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
    ) -> None:
        self._inner = inner
        self._obj = obj
        self._in = incoming
        self._out = outgoing
        self._detached = False
        self._write_closed = False
        self._closed = False
        self._close_notify_due = False
        self._version: str = obj.version() or ""
        self._alpn: str | None = obj.selected_alpn_protocol()
        #: Called once with the session as soon as it holds a ticket (``enableSessionResumption``).
        self._on_session: Callable[[ssl.SSLSession], None] | None = None

    def _offer_session(self) -> None:
        """Hand a resumable session to ``_on_session`` once (TLS 1.3 tickets arrive after the handshake)."""
        sink = self._on_session
        session = self._obj.session
        if sink is not None and session is not None and session.has_ticket:
            self._on_session = None
            sink(session)

    @property
    def tls_version(self) -> str:
        return self._version

    @property
    def alpn(self) -> str | None:
        return self._alpn

    @property
    def inner(self) -> ByteStream:
        """The stream under TLS (after :meth:`detach_raw`, the caller reads it directly)."""
        return self._inner

    async def _flush(self) -> None:
        out = self._out
        if out.pending:
            await self._inner.write(out.read())

    async def _fill(self) -> None:
        """Move more ciphertext from the inner stream into the incoming BIO."""
        await self._flush()
        data = await self._inner.read(CHUNK)
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()

    async def read_record(self, max_bytes: int = 65536) -> bytes:
        """Plaintext from at most one TLS record; ``b""`` at the end of the stream."""
        if self._detached:
            raise RuntimeError("TLS reading was detached (detach_raw)")
        if self._closed:
            return b""
        obj = self._obj
        while True:
            try:
                data = obj.read(max_bytes)
            except ssl.SSLWantReadError:
                if self._close_notify_due:
                    self._close_notify()
                await self._fill()
                continue
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                return b""  # Go peers often close without close_notify: treat as EOF
            except ssl.SSLError as exc:
                raise TlsError(f"tls read: {exc.reason or exc}") from None
            if self._out.pending:
                await self._flush()  # e.g. a KeyUpdate answer
            if self._on_session is not None:
                self._offer_session()
            return data

    async def read(self, max_bytes: int = 65536) -> bytes:
        """Plaintext from one or more records already received (up to *max_bytes*)."""
        first = await self.read_record(max_bytes)
        if not first or len(first) >= max_bytes:
            return first
        parts = [first]
        size = len(first)
        obj = self._obj
        while size < max_bytes and (obj.pending() or self._in.pending >= 5):
            try:
                more = obj.read(max_bytes - size)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                break  # reported as b"" by the next read
            except ssl.SSLError as exc:
                raise TlsError(f"tls read: {exc.reason or exc}") from None
            if not more:
                break
            parts.append(more)
            size += len(more)
        if self._out.pending:
            await self._flush()
        return b"".join(parts)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._write_closed or self._closed:
            raise StreamClosed("TLS write side closed")
        try:
            self._obj.write(data)
        except ssl.SSLError as exc:
            raise TlsError(f"tls write: {exc.reason or exc}") from None
        await self._flush()

    async def write_eof(self) -> None:
        """Send close_notify (TLS 1.3 lets the peer keep sending).  Idempotent.

        OpenSSL's shutdown reads the incoming buffer and fails on application data
        found there, so while received records wait undecrypted the alert is sent by
        the reader once it has drained them.
        """
        if self._write_closed:
            return
        self._write_closed = True
        if self._in.pending or self._obj.pending():
            self._close_notify_due = True
            return
        self._close_notify()
        try:
            await self._flush()
        except ConnectionError:
            pass

    def _close_notify(self) -> None:
        self._close_notify_due = False
        try:
            self._obj.unwrap()
        except ssl.SSLWantReadError:
            pass  # the peer's close_notify is not awaited
        except ssl.SSLError:
            pass

    def detach_raw(self) -> tuple[bytes, bytes, ByteStream]:
        """End TLS reading; return (decrypted unread plaintext, undecrypted raw bytes, inner stream)."""
        if self._detached:
            raise RuntimeError("already detached")
        if self._out.pending:  # a caller reads the inner stream from here: nothing may stay unsent
            raise RuntimeError("detach_raw before the handshake's last flight was written")
        obj = self._obj
        parts: list[bytes] = []
        while obj.pending():
            try:
                parts.append(obj.read(obj.pending()))
            except ssl.SSLError:
                break
        self._detached = True
        raw = self._in.read()
        return b"".join(parts), raw, self._inner

    def abort(self) -> None:
        self._closed = True
        self._inner.abort()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._inner.aclose()


async def handshake(
    inner: ByteStream,
    ctx: ssl.SSLContext,
    server_name: str | None,
    *,
    server_side: bool = False,
    session: ssl.SSLSession | None = None,
    on_session: Callable[[ssl.SSLSession], None] | None = None,
) -> TlsStream:
    """Run the handshake over *inner*; raise :class:`TlsError` (a ``ConnectionError``).

    ``server_side=True`` runs the server's side (test peers; tunray itself is a client).
    A client offers *session* for resumption (the server may decline: then a full
    handshake runs) and hands the new session to *on_session* once it holds a ticket.
    A client's last flight stays unsent until the first write or read (module docstring).
    """
    incoming = ssl.MemoryBIO()
    outgoing = ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_side=server_side, server_hostname=server_name or None,
                       session=session)
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            if outgoing.pending:
                await inner.write(outgoing.read())
            data = await inner.read(CHUNK)
            if not data:
                raise TlsError("connection closed during the TLS handshake") from None
            incoming.write(data)
        except ssl.SSLCertVerificationError as exc:
            raise TlsError(f"certificate refused: {exc.verify_message or exc.reason}") from None
        except ssl.SSLError as exc:
            raise TlsError(f"tls handshake failed: {exc.reason or exc}") from None
    if server_side and outgoing.pending:
        await inner.write(outgoing.read())
    stream = TlsStream(inner, obj, incoming, outgoing)
    if on_session is not None:
        stream._on_session = on_session
        stream._offer_session()  # TLS 1.2: the ticket came with the handshake
    return stream


def leaf_der(stream: TlsStream) -> bytes:
    """The server's leaf certificate (DER), verified or not."""
    der = stream._obj.getpeercert(binary_form=True)
    return der or b""
