"""The ``vless`` outbound (Xray ``proxy/vless/outbound``).

Per flow: dial the server through ``streamSettings`` (:class:`tunray.transport.Dialable`:
socket, then security such as ``security:tls``, then transport), within the level's
``handshake`` seconds; accept the app's link once connected; wait up to 500 ms for
the first payload and send it together with the request header; then relay.

* TCP: command 01 to the flow's target; :func:`tunray.relay.relay` over a
  :class:`~tunray_vless.body.Body` (response header, Vision).
* UDP: XUDP (command 03 to ``v1.mux.cool``, per-packet addresses, full cone, a
  GlobalID from the app's source) under Vision and for every port but 53 and 443;
  plain length-prefixed packets (command 02, one destination) for 53 and 443 without
  a flow, as Xray does.  Vision refuses UDP/443 unless the flow is
  ``xtls-rprx-vision-udp443``.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
from typing import Any

from loguru import logger
from tunray.bytestream import ByteStream
from tunray.config.errors import ConfigError, join
from tunray.link import ByteLink, PacketLink
from tunray.net.address import Destination, Network
from tunray.net.dialer import DialError
from tunray.outbound import Outbound
from tunray.policy import LevelPolicy
from tunray.relay import Activity, relay, run_pumps
from tunray.session import FlowContext
from tunray.transport import Dialable

from tunray_vless.body import Body, check_vision_stream
from tunray_vless.codec import (
    NO_ADDONS,
    VISION_ADDONS,
    Command,
    PacketDecoder,
    XudpReader,
    XudpWriter,
    encode_packet,
    encode_request,
    global_id,
)
from tunray_vless.settings import SETTINGS_SCHEMA, ServerSpec, resolve

FIRST_PAYLOAD_WAIT = 0.5  # Xray waits this long to send the header with the first payload
READ_CHUNK = 256 * 1024
PLAIN_UDP_PORTS = frozenset({53, 443})
VISION_SECURITIES = frozenset({"tls", "reality"})


def _base_key() -> bytes:
    """XUDP BaseKey: ``XRAY_XUDP_BASEKEY`` (base64url, 32 bytes) as in Xray, else random per process."""
    text = os.environ.get("XRAY_XUDP_BASEKEY") or os.environ.get("xray.xudp.basekey")
    if text:
        try:
            key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except ValueError:
            key = b""
        if len(key) == 32:
            return key
        logger.warning("vless: XRAY_XUDP_BASEKEY is not 32 bytes of base64url; using a random key")
    return secrets.token_bytes(32)


BASE_KEY = _base_key()


class VisionRejected(ConnectionRefusedError):
    """UDP/443 under Vision without the -udp443 flow (Xray: "XTLS rejected UDP/443 traffic")."""


class VlessOutbound(Outbound):
    protocol = "vless"
    settings_schema = SETTINGS_SCHEMA

    @classmethod
    def validate_config(cls, settings: Any, path: str, registry: Any, stream: Any = None) -> None:
        """Vision needs TLS directly over raw TCP: Xray refuses it per connection, tunray at ``-test``."""
        spec = resolve(settings, path)
        if spec.vision and (stream is None or stream.security not in VISION_SECURITIES or stream.network != "raw"):
            raise ConfigError(
                join(path, "flow"),
                'flow "xtls-rprx-vision" needs streamSettings {"network": "raw", "security": "tls"} '
                "(or reality): XTLS only supports TLS and REALITY directly",
            )

    def __init__(self, config: Any, runtime: Any) -> None:
        super().__init__(config, runtime)
        self.spec: ServerSpec = resolve(self.settings, join(config.path, "settings"))
        stream = config.stream
        self.dialable = Dialable(runtime, stream, config.send_through)
        sockopt = stream.settings.sockopt if stream is not None else None
        self.strategy: str = sockopt.domainStrategy if sockopt is not None else "AsIs"

    async def _connect(self, policy: LevelPolicy) -> ByteStream:
        server = self.spec.server
        try:
            async with asyncio.timeout(policy.handshake):
                return await self.dialable.connect(server, timeout=policy.handshake, strategy=self.strategy)
        except TimeoutError:
            raise DialError(f"vless server {server.netloc}: no connection within {policy.handshake:g} s") from None

    def _addons(self) -> Any:
        return VISION_ADDONS if self.spec.vision else NO_ADDONS

    async def process(self, ctx: FlowContext, link: ByteLink | PacketLink) -> None:
        policy = self.runtime.policy(self.spec.level or ctx.user.level)
        if isinstance(link, PacketLink):
            await self._udp(ctx, link, policy)
        else:
            await self._tcp(ctx, link, policy)

    async def _tcp(self, ctx: FlowContext, link: ByteLink, policy: LevelPolicy) -> None:
        stream = await self._connect(policy)
        try:
            if self.spec.vision:
                check_vision_stream(stream)
            body = Body(stream, self.spec)
            await link.accept()
            first = b""
            try:  # a timeout scope, not wait_for: no extra task per connection
                async with asyncio.timeout(FIRST_PAYLOAD_WAIT):
                    first = await link.read(READ_CHUNK)
            except TimeoutError:
                pass
            ctx.uplink_bytes += len(first)
            header = encode_request(self.spec.user_id, Command.TCP, ctx.target, self._addons())
            await body.send_first(header, first)
            await relay(link, body, policy, ctx)
        except BaseException:
            stream.abort()
            raise
        await stream.aclose()

    async def _udp(self, ctx: FlowContext, link: PacketLink, policy: LevelPolicy) -> None:
        spec = self.spec
        target = Destination(Network.UDP, ctx.target.host, ctx.target.port)
        if spec.vision and target.port == 443 and not spec.udp443:
            raise VisionRejected("XTLS rejected UDP/443 traffic (use flow xtls-rprx-vision-udp443 to allow it)")
        xudp = spec.vision or target.port not in PLAIN_UDP_PORTS
        try:
            first = await asyncio.wait_for(link.recv(), FIRST_PAYLOAD_WAIT)
        except TimeoutError:
            first = None
        stream = await self._connect(policy)
        try:
            if spec.vision:
                check_vision_stream(stream)
            body = Body(stream, spec)
            writer: XudpWriter | None = None
            if xudp:
                writer = XudpWriter(target, global_id(str(ctx.source), BASE_KEY))
                header = encode_request(spec.user_id, Command.MUX, None, self._addons())
            else:
                header = encode_request(spec.user_id, Command.UDP, target, self._addons())

            def frame(data: bytes, peer: Destination) -> bytes:
                if writer is not None:
                    return writer.write(data, peer)
                return encode_packet(data)

            payload = b""
            if first is not None:
                payload = frame(first.data, first.peer)
                ctx.uplink_bytes += len(first.data)
            await body.send_first(header, payload)
            await _pump_udp(ctx, link, body, frame, target, xudp, policy)
        except BaseException:
            stream.abort()
            raise
        await stream.aclose()


async def _pump_udp(
    ctx: FlowContext,
    link: PacketLink,
    body: Body,
    frame: Any,
    target: Destination,
    xudp: bool,
    policy: LevelPolicy,
) -> None:
    """Carry datagrams both ways until the app's flow closes, the server closes, or idle."""
    activity = Activity()

    async def uplink() -> None:
        while True:
            packet = await link.recv()
            if packet is None:
                return
            activity.touch()
            data = frame(packet.data, packet.peer)
            if data:
                ctx.uplink_bytes += len(packet.data)
                await body.write(data)

    async def downlink() -> None:
        reader = XudpReader(target) if xudp else None
        decoder = PacketDecoder() if not xudp else None
        while True:
            data = await body.read(READ_CHUNK)
            if not data:
                return
            activity.touch()
            if reader is not None:
                for payload, source in reader.feed(data):
                    ctx.downlink_bytes += len(payload)
                    link.send(payload, source)
                if reader.eof:
                    return
            else:
                assert decoder is not None
                for payload in decoder.feed(data):
                    ctx.downlink_bytes += len(payload)
                    link.send(payload, target)

    await run_pumps([uplink(), downlink()], activity, policy.conn_idle)
