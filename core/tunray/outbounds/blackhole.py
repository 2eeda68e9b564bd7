"""``blackhole``: drop the flow.  Settings as Xray: ``response.type`` ``none`` or ``http``.

With ``none`` a TCP flow is reset without ever completing the app's handshake on a
lazy stack; with ``http`` the handshake completes, an HTTP 403 is written, and the
flow closes (what Xray does so browsers stop retrying).
"""

from __future__ import annotations

from tunray.config.schema import Enum, Field, Schema
from tunray.link import ByteLink, PacketLink
from tunray.outbound import Outbound
from tunray.session import FlowContext

HTTP_403 = b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\nCache-Control: max-age=3600, public\r\nContent-Length: 0\r\n\r\n"


class BlackholeOutbound(Outbound):
    protocol = "blackhole"
    settings_schema = Schema(
        Field(
            "response",
            Schema(Field("type", Enum("none", "http"), default="none", doc="what the app sees")),
            default=None,
            doc="response sent before closing",
        ),
    )

    async def process(self, ctx: FlowContext, link: ByteLink | PacketLink) -> None:
        response = self.settings.response
        if isinstance(link, ByteLink) and response is not None and response.type == "http":
            await link.accept()
            await link.write(HTTP_403)
            await link.write_eof()
            return
        link.abort()
