"""End to end: app -> kernel -> TUN -> stack -> dispatcher -> freedom -> echo server.

World (made per test, removed after)::

    client ns                                      server ns
    app ──> trtun9 (172.19.0.1/30, fd00:19::1/126)
            tunray (in-process, this thread in ns) ── veth-c 10.200.0.1 ──── veth-s 10.200.0.2
            default via 10.200.0.2 metric 100                               lo: 203.0.113.10/32
                                                                                198.51.100.1/32
                                                                                2001:db8:10::10/128
                                                                            echo server on every address

The TUN captures a range that also contains the way to the server, so without a
loop-safety recipe freedom's own dial would re-enter the TUN.  One test per recipe
of docs/routing-loops.md; each turns ``autoOutboundsInterface`` off unless it is the
recipe under test, so the recipe alone keeps the loop away.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import tun_app
import tun_helpers
from tun_helpers import sh, topology, tun_config
from tunray.log import AccessLog
from tunray.testing.harness import running
from tunray.testing.netns import Topology, ns_exec

pytestmark = pytest.mark.root

T = TypeVar("T")
TUN = "trtun9"
HOST4 = "203.0.113.10"  # the app's destination ("a host on the internet")
HOST6 = "2001:db8:10::10"
PROXY4 = "198.51.100.1"  # where a redirecting outbound goes ("the proxy server")
ECHO = 7000
STACKS = ["python", "lwip", "system", "mixed"]  # every first-party stack runs the protocol tests below
APP_SCRIPT = Path(tun_app.__file__).read_text()


def _world(topo: Topology, *, default_metric: int = 100) -> None:
    for addr in (f"{HOST4}/32", f"{PROXY4}/32", f"{HOST6}/128"):
        sh(topo.server, "ip", "addr", "add", addr, "dev", "lo")
    sh(
        topo.client,
        "ip",
        "route",
        "add",
        "default",
        "via",
        str(topo.server_v4),
        "dev",
        topo.client_if,
        "metric",
        str(default_metric),
    )
    sh(
        topo.client,
        "ip",
        "-6",
        "route",
        "add",
        "default",
        "via",
        str(topo.server_v6),
        "dev",
        topo.client_if,
        "metric",
        str(default_metric),
    )
    topo.start_echo(port=ECHO)


def _settings(routes: list[str], **extra: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "name": TUN,
        "gateway": ["172.19.0.1/30", "fd00:19::1/126"],
        "autoSystemRoutingTable": routes,
        "autoOutboundsInterface": "",
        "stack": "python",
    }
    s.update(extra)
    return s


def _freedom(settings: dict[str, Any] | None = None, sockopt: dict[str, Any] | None = None) -> dict[str, Any]:
    ob: dict[str, Any] = {"protocol": "freedom", "tag": "direct", "settings": settings or {}}
    if sockopt is not None:
        ob["streamSettings"] = {"sockopt": sockopt}
    return ob


async def _in_client(topo: Topology, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    def call() -> T:
        with topo.enter(topo.client):
            return fn(*args, **kw)

    return await asyncio.to_thread(call)


def _route_dev(topo: Topology, dst: str) -> str:
    out = ns_exec(topo.client, "ip", "route", "get", dst).stdout.split()
    return out[out.index("dev") + 1]


async def _through_tun(
    topo: Topology,
    cfg: dict[str, Any],
    host: str = HOST4,
    *,
    check_udp_source: bool = False,
    before: Callable[[], None] | None = None,
) -> str:
    """Run the runtime in the client namespace; TCP + UDP echo to *host* must work via the TUN.

    The echo server answers UDP from an unbound socket, so its reply to an address on
    its ``lo`` leaves from 10.200.0.2; with a full-cone stack the app sees that source.
    Only the port is checked unless *check_udp_source*.
    """
    log = io.StringIO()
    with topo.enter(topo.client):
        async with running(cfg, extra=[tun_helpers], access_log=AccessLog(log)):
            if before is not None:
                before()
            assert _route_dev(topo, host) == TUN, "the app's route must go into the TUN"
            n = await _in_client(topo, tun_app.tcp_echo, host, ECHO)
            assert n == 256 * 1024
            await _in_client(topo, tun_app.udp_echo, host, ECHO, check_source=check_udp_source)
            text = log.getvalue()
    target = f"[{host}]" if ":" in host else host
    assert f"accepted tcp:{target}:{ECHO}" in text, text
    assert f"accepted udp:{target}:{ECHO}" in text, text
    return text


# --- one test per loop-safety recipe (docs/routing-loops.md) ---------------------------------------


async def test_recipe_sockopt_interface() -> None:
    with topology() as topo:
        _world(topo)
        cfg = tun_config(_settings(["203.0.113.0/24"]), _freedom(sockopt={"interface": topo.client_if}))
        await _through_tun(topo, cfg)


async def test_recipe_sockopt_mark_with_ip_rule() -> None:
    with topology() as topo:
        _world(topo)
        ns = topo.client
        sh(
            ns,
            "ip",
            "route",
            "add",
            "default",
            "via",
            str(topo.server_v4),
            "dev",
            topo.client_if,
            "table",
            "100",
        )
        sh(ns, "ip", "rule", "add", "fwmark", "0x1a", "lookup", "100", "pref", "100")
        cfg = tun_config(_settings(["203.0.113.0/24"]), _freedom(sockopt={"mark": 0x1A}))
        await _through_tun(topo, cfg)


@pytest.mark.parametrize("stack", STACKS)
async def test_recipe_auto_outbounds_interface(stack: str) -> None:
    with topology() as topo:
        _world(topo)
        settings = _settings(["203.0.113.0/24"], stack=stack)
        del settings["autoOutboundsInterface"]  # routes set => "auto", as in Xray
        cfg = tun_config(settings, _freedom())
        await _through_tun(topo, cfg)


async def test_recipe_static_host_route_to_the_server() -> None:
    with topology() as topo:
        _world(topo)  # the real default route has metric 100; the TUN's 0/0 has metric 1 and wins
        sh(
            topo.client,
            "ip",
            "route",
            "add",
            f"{PROXY4}/32",
            "via",
            str(topo.server_v4),
            "dev",
            topo.client_if,
        )
        cfg = tun_config(_settings(["0.0.0.0/0"]), _freedom({"redirect": f"{PROXY4}:{ECHO}"}))
        await _through_tun(topo, cfg)


async def test_recipe_split_default_routes() -> None:
    with topology() as topo:
        _world(topo, default_metric=0)  # a metric-0 default route would beat a 0/0 route into the TUN
        sh(
            topo.client,
            "ip",
            "route",
            "add",
            f"{PROXY4}/32",
            "via",
            str(topo.server_v4),
            "dev",
            topo.client_if,
        )
        cfg = tun_config(_settings(["0.0.0.0/1", "128.0.0.0/1"]), _freedom({"redirect": f"{PROXY4}:{ECHO}"}))
        await _through_tun(topo, cfg)
        # the original default route was left alone
        assert any(r["dst"] == "default" for r in tun_helpers.routes(topo.client))


async def test_recipe_policy_table_by_uid() -> None:
    """Only the app's user is routed into the TUN (table 200); tunray (root) uses main."""
    with topology() as topo:
        _world(topo)
        ns = topo.client
        cfg = tun_config(_settings([]), _freedom())
        log = io.StringIO()

        def rules() -> None:
            sh(ns, "ip", "route", "add", "default", "dev", TUN, "table", "200")
            sh(ns, "ip", "-6", "route", "add", "default", "dev", TUN, "table", "200")
            sh(ns, "ip", "rule", "add", "uidrange", "65534-65534", "lookup", "200", "pref", "200")
            sh(ns, "ip", "-6", "rule", "add", "uidrange", "65534-65534", "lookup", "200", "pref", "200")

        def app(what: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "setpriv",
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    "/usr/bin/python3",
                    "-c",
                    APP_SCRIPT,
                    what,
                    HOST4,
                    str(ECHO),
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )

        with topo.enter(ns):
            async with running(cfg, extra=[tun_helpers], access_log=AccessLog(log)):
                rules()
                got = ns_exec(ns, "ip", "route", "get", HOST4, "uid", "65534").stdout
                assert f"dev {TUN}" in got, got
                assert _route_dev(topo, HOST4) == topo.client_if, "root's traffic stays in main"
                for what in ("tcp", "udp"):
                    res = await asyncio.to_thread(app, what)
                    assert res.returncode == 0, res.stderr
                text = log.getvalue()
        assert f"accepted tcp:{HOST4}:{ECHO}" in text and f"accepted udp:{HOST4}:{ECHO}" in text, text


@pytest.mark.timeout(40)
async def test_without_a_recipe_the_dial_loops_and_fails() -> None:
    """The control experiment: no recipe, and freedom's dial re-enters the TUN."""
    with topology() as topo:
        _world(topo)
        cfg = tun_config(_settings(["203.0.113.0/24"], maxFlows=16), _freedom())
        log = io.StringIO()
        with topo.enter(topo.client):
            async with running(cfg, extra=[tun_helpers], access_log=AccessLog(log)):
                with pytest.raises(OSError):
                    await _in_client(topo, tun_app.tcp_echo, HOST4, ECHO, 1024, 10.0)
                text = log.getvalue()
        # the same destination was accepted again and again: from the app, then from tunray itself
        assert text.count(f"accepted tcp:{HOST4}:{ECHO}") >= 2, text


# --- protocols and behaviours ------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
async def test_ipv6_tcp_and_udp(stack: str) -> None:
    with topology() as topo:
        _world(topo)
        settings = _settings(["2001:db8:10::/48"], stack=stack)
        del settings["autoOutboundsInterface"]
        await _through_tun(topo, tun_config(settings, _freedom()), HOST6)


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("host", [HOST4, HOST6])
async def test_refused_upstream_resets_the_app_quickly(host: str, stack: str) -> None:
    with topology() as topo:
        _world(topo)
        settings = _settings(["203.0.113.0/24", "2001:db8:10::/48"], handshake="lazy", stack=stack)
        del settings["autoOutboundsInterface"]
        with topo.enter(topo.client):
            async with running(tun_config(settings, _freedom()), extra=[tun_helpers]):
                # ECHO + 9 is closed on the server: the kernel there answers RST
                elapsed = await _in_client(topo, tun_app.tcp_refused, host, ECHO + 9)
        assert elapsed < 1.0, f"the app waited {elapsed:.2f}s for the refusal"


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("host", ["203.0.113.99", "2001:db8:10::99"])
async def test_ping_is_answered_locally(host: str, stack: str) -> None:
    with topology() as topo:
        _world(topo)
        # neither address exists anywhere: only the stack can answer
        settings = _settings(["203.0.113.0/24", "2001:db8:10::/48"], stack=stack)
        with topo.enter(topo.client):
            async with running(tun_config(settings, _freedom()), extra=[tun_helpers]):
                source, rtt = await _in_client(topo, tun_app.ping, host)
        assert source == host
        assert rtt < 1.0


# --- how a flow ends: an upstream reset is a RST for the app, a clean end a FIN ----------------


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("handshake", ["lazy", "eager"])
async def test_upstream_reset_reaches_the_app_as_econnreset(handshake: str, stack: str) -> None:
    """The server sends 16 bytes then resets: the app reads exactly them, then ECONNRESET, at once."""
    from tunray.testing.echo import RESET_OFFSET, RESET_PREFIX, pattern

    with topology() as topo:
        _world(topo)
        cfg = tun_config(
            _settings(["203.0.113.0/24"], handshake=handshake, stack=stack),
            _freedom(sockopt={"interface": topo.client_if}),
        )
        cfg["policy"]["levels"]["0"].update(uplinkOnly=2, downlinkOnly=2)
        with topo.enter(topo.client):
            async with running(cfg, extra=[tun_helpers]):
                got, end, took = await _in_client(topo, tun_app.tcp_until_end, HOST4, ECHO + RESET_OFFSET)
                assert (got, end) == (RESET_PREFIX, "reset"), (got, end)
                assert took < 1.5, f"the reset reached the app after {took:.2f} s (uplinkOnly is 2 s)"
                # the counterpart: 1 MiB then the server's FIN is every byte, then a FIN
                size = (1 << 20).to_bytes(8, "big")
                got, end, _ = await _in_client(topo, tun_app.tcp_until_end, HOST4, ECHO + 1, size)
                assert end == "fin" and got == pattern(1 << 20), (len(got), end)
