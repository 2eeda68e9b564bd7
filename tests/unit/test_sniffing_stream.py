"""``sniff_stream``: when it stops reading, and what it hands back.

The rule is Xray's: a sniffer that rules the bytes out is dropped; sniffing ends as soon
as none is left, and waits for more bytes only while some sniffer still needs them.  The
tests count reads instead of timing them, so they say exactly which reads happened.
"""

from __future__ import annotations

import asyncio

from tunray.config.model import SNIFFING_SCHEMA
from tunray.link import ByteLink
from tunray.sniff.samples import client_hello, tls_records
from tunray.sniffing import SniffConfig, sniff_stream

SSH_BANNER = b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"


class ScriptedLink(ByteLink):
    """Hands out *chunks* one per read, then blocks forever (an app waiting for a reply)."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)
        self.reads = 0

    async def read(self, n: int) -> bytes:
        self.reads += 1
        if self.chunks:
            return self.chunks.pop(0)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def write(self, data: bytes) -> None:
        raise AssertionError("sniffing never writes")

    def write_eof(self) -> None:
        raise AssertionError("sniffing never closes")

    async def accept(self) -> None:
        pass

    def abort(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


def _cfg() -> SniffConfig:
    cfg = SniffConfig.compile(SNIFFING_SCHEMA.parse({"enabled": True, "destOverride": ["http", "tls"]}, "sniffing"), "sniffing")
    assert cfg is not None
    return cfg


async def test_bytes_no_sniffer_knows_end_sniffing_after_one_read() -> None:
    link = ScriptedLink(SSH_BANNER)
    result, consumed = await sniff_stream(link, _cfg())
    assert result is None
    assert consumed == SSH_BANNER
    assert link.reads == 1  # the old loop read again and sat out the 200 ms budget


async def test_binary_protocol_is_relayed_without_a_second_read() -> None:
    link = ScriptedLink(bytes(range(32)))
    result, consumed = await sniff_stream(link, _cfg())
    assert (result, consumed, link.reads) == (None, bytes(range(32)), 1)


async def test_partial_client_hello_waits_for_the_rest() -> None:
    hello = tls_records(client_hello("split.example.com"))
    link = ScriptedLink(hello[:40], hello[40:])
    result, consumed = await sniff_stream(link, _cfg())
    assert result is not None and result.domain == "split.example.com"
    assert consumed == hello
    assert link.reads == 2


async def test_partial_http_method_keeps_only_http_pending() -> None:
    # "GE" may still become GET: the TLS sniffer is out after the first read, HTTP waits.
    link = ScriptedLink(b"GE", b"T / HTTP/1.1\r\nHost: a.test\r\n\r\n")
    result, _ = await sniff_stream(link, _cfg())
    assert result is not None and (result.protocol, result.domain) == ("http1", "a.test")
    assert link.reads == 2
