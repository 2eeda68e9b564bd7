"""What every listening inbound shares: ``listen``/``port``, the accept loop, accounts.

``start`` binds every socket first (so a port in use fails the start, before any flow)
and then listens; ``stop`` stops accepting, cancels every connection's task (each
closes its own socket in ``finally``) and is idempotent.  Subclasses implement
:meth:`LocalInbound.handle` for one accepted connection and may add UDP sockets in
:meth:`LocalInbound.open_udp`.
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Any

from loguru import logger
from tunray.config.errors import ConfigError, NotSupported, join
from tunray.config.schema import Field, ListOf, Schema, Settings, Str
from tunray.inbound import Inbound
from tunray.net.address import Destination
from tunray.net.listen import ListenAddress, StreamServer, make_socket, sockaddr_destination
from tunray.net.sockopt import DEFAULT_SOCKOPT
from tunray.net.stream import SocketStream
from tunray.session import FlowContext, User

if TYPE_CHECKING:
    from tunray.config.model import InboundConfig, StreamConfig
    from tunray.plugin.registry import Registry
    from tunray.runtime import Runtime

ACCOUNT = Schema(
    Field("user", Str(), default="", doc="user name (also the flow's email for routing and logs)"),
    Field("pass", Str(), default="", doc="password"),
)
ACCOUNTS = Field("accounts", ListOf(ACCOUNT), default=None, aliases=("users",), doc="user/password pairs")


def accounts_of(s: Settings) -> dict[str, str]:
    return {a.user: a.get("pass") for a in (s.accounts or [])}


class Refused(Exception):
    """The handshake was answered with a refusal; the connection closes gracefully."""


async def read_some(stream: SocketStream, timeout: float) -> bytes:
    """One read with the handshake timeout; ``b""`` on EOF or timeout."""
    try:
        # asyncio.timeout, not wait_for: no extra task per handshake read (connections/s)
        async with asyncio.timeout(timeout):
            return await stream.read()
    except (TimeoutError, ConnectionError):
        return b""


class LocalInbound(Inbound):
    """A listening inbound; see the module docstring."""

    def __init__(self, config: InboundConfig, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        self.address = ListenAddress.parse(config.listen, config.port, config.path)
        self.user_level = int(self.settings.get("userLevel") or 0)
        self.policy = runtime.policy(self.user_level)
        self.server = StreamServer(self._serve, high_water=self.policy.buffer_size)
        #: whether to listen on TCP (dokodemo-door may be UDP only)
        self.tcp = True
        #: False once shutdown began (no new flows)
        self.accepting = True
        self._state = "new"

    #: ``streamSettings.sockopt`` keys this inbound applies; any other set key is refused.
    sockopt_keys: tuple[str, ...] = ("tproxy",)

    @classmethod
    def validate_config(cls, settings: Settings, path: str, registry: Registry, stream: StreamConfig | None = None) -> None:
        """A listening inbound takes plain TCP: no transport, no security, few socket options."""
        if stream is None:
            return
        base = join(path.removesuffix(".settings"), "streamSettings")
        if stream.network != "raw":
            raise NotSupported(join(base, "network"), f"the {cls.protocol} inbound over {stream.network!r}")
        if stream.security != "none":
            raise NotSupported(join(base, "security"), f"{stream.security!r} on the {cls.protocol} inbound")
        raw = stream.settings.rawSettings
        if raw is not None and raw.acceptProxyProtocol:
            raise NotSupported(join(join(base, "rawSettings"), "acceptProxyProtocol"), "the PROXY protocol")
        if raw is not None and raw.header is not None and raw.header.type.lower() != "none":
            raise NotSupported(join(join(base, "rawSettings"), "header"), f"an HTTP header on the {cls.protocol} inbound")
        sockopt = stream.settings.sockopt
        if sockopt is not None:
            for key, value in sockopt.items():
                if key not in cls.sockopt_keys and value != DEFAULT_SOCKOPT.get(key):
                    raise NotSupported(join(join(base, "sockopt"), key), f"sockopt.{key} on the {cls.protocol} inbound")

    @classmethod
    def check_listen(cls, listen: str, port: Any, path: str) -> None:
        ListenAddress.parse(listen, port, path)

    def sockets(self, kind: int, *, transparent: bool = False) -> list[socket.socket]:
        addr = self.address
        if addr.unix:
            return [make_socket(addr, 0, kind)]
        return [make_socket(addr, port, kind, transparent=transparent) for port in addr.ports]

    def transparent(self) -> bool:
        """Whether sockets need IP_TRANSPARENT (``streamSettings.sockopt.tproxy: "tproxy"``)."""
        stream = self.config.stream
        return stream is not None and stream.settings.sockopt is not None and stream.settings.sockopt.tproxy == "tproxy"

    async def start(self) -> None:
        if self._state != "new":
            raise RuntimeError("an inbound starts once")
        self._state = "started"
        try:
            if self.tcp:
                socks = self.sockets(socket.SOCK_STREAM, transparent=self.transparent())
                try:
                    for s in socks:
                        await self.server.listen(s)
                except BaseException:
                    for s in socks:
                        s.close()
                    raise
            await self.open_udp()
        except OSError as exc:
            await self.stop()
            raise ConfigError(self.config.path, f"cannot listen on {self._where()}: {exc.strerror or exc}") from None
        except BaseException:
            await self.stop()
            raise
        logger.info("{} inbound {!r} listening on {}", self.protocol, self.tag, self._where())

    def _where(self) -> str:
        a = self.address
        if a.unix:
            return a.unix
        ports = ",".join(map(str, a.ports[:4])) + ("..." if len(a.ports) > 4 else "")
        return f"{a.host}:{ports}"

    async def open_udp(self) -> None:
        """Open UDP sockets at start (dokodemo-door); default none."""

    async def stop_accepting(self) -> None:
        """Shutdown, step 1: close the listening sockets; running flows are drained by the runtime."""
        self.accepting = False
        self.server.stop_accepting()

    async def stop(self) -> None:
        if self._state == "stopped":
            return
        self._state = "stopped"
        await self.server.aclose()

    async def _serve(self, stream: SocketStream, sock: socket.socket) -> None:
        if self.address.unix:
            peer = local = None
        else:
            try:
                peername, sockname = sock.getpeername(), sock.getsockname()
            except OSError:  # gone before it was accepted
                stream.abort()
                return
            peer, local = sockaddr_destination(peername), sockaddr_destination(sockname)
        try:
            await self.handle(stream, sock, peer, local)
        except Refused as exc:
            logger.info("{} inbound {!r}: refused: {}", self.protocol, self.tag, exc)
            if peer is not None:
                self.runtime.access_log.write(peer, "rejected", "", "", str(exc))
        except Exception as exc:  # a malformed handshake ends this connection only
            logger.info("{} inbound {!r}: {}: {}", self.protocol, self.tag, type(exc).__name__, exc)
            if peer is not None:
                self.runtime.access_log.write(peer, "rejected", "", "", str(exc))
            # closed (a FIN) by the finally below, as Xray closes; abort() would send a RST
        finally:
            await stream.aclose()

    async def handle(
        self, stream: SocketStream, sock: socket.socket, peer: Destination | None, local: Destination | None
    ) -> None:
        raise NotImplementedError

    def context(self, peer: Destination | None, target: Destination, email: str = "") -> FlowContext:
        source = peer if peer is not None else Destination(target.network, "unix", 0)
        ctx = self.new_context(source, target)
        if email:
            ctx.user = User(level=self.user_level, email=email)
        return ctx
