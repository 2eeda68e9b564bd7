"""A stand-in for a REALITY server's "target" (decoy) site: TLS 1.3 + a tiny HTTP answer.

Run inside the test's server namespace: ``python decoy_server.py PORT CERT KEY [echo]``
(``echo``: a TLS echo server instead, the inner TLS that makes XTLS Vision switch); prints
``ready`` once listening.  Many connections at once (asyncio), since a REALITY server
opens one to its target for every incoming connection.
"""

from __future__ import annotations

import asyncio
import ssl
import sys

BODY = b"<html><body>decoy site</body></html>"


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        writer.write_eof() if writer.can_write_eof() else None
        await writer.drain()
    except (OSError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            if line in (b"\r\n", b"\n"):
                head = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n" % len(BODY)
                writer.write(head + BODY)
                await writer.drain()
    except (OSError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def main(port: int, cert: str, key: str, role: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    server = await asyncio.start_server(_echo if role == "echo" else _serve, host=None, port=port, ssl=ctx, backlog=512)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else "decoy"))
