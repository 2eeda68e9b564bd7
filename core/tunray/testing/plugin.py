"""The pytest plugin behind ``tunray.testing`` (loaded through the ``pytest11`` entry point)."""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Iterator
from typing import Any

import pytest

ROOT_REASON = "needs root with /dev/net/tun and ip netns (CI runs these as root)"


def is_root_capable() -> bool:
    return os.geteuid() == 0 and os.path.exists("/dev/net/tun")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "root: needs root, /dev/net/tun and network namespaces")
    config.addinivalue_line("markers", "slow: long end-to-end transfer")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if is_root_capable():
        return
    if os.environ.get("CI"):
        # On CI every root test must run: refusing beats a silent skip.
        return
    skip = pytest.mark.skip(reason=ROOT_REASON)
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_async_test(fn: Any, kwargs: dict[str, Any], timeout: float) -> None:
    """Run one coroutine test on a fresh loop; fail on loop errors and leaked tasks."""
    loop = new_event_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))

    async def main() -> None:
        await asyncio.wait_for(fn(**kwargs), timeout)
        # Give closing callbacks one turn, then look for leftovers.
        await asyncio.sleep(0)
        current = asyncio.current_task()
        leaked = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        if leaked:
            for t in leaked:
                t.cancel()
            await asyncio.gather(*leaked, return_exceptions=True)
            raise AssertionError(f"test leaked {len(leaked)} task(s): {leaked[:3]}")

    try:
        loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    if errors:
        first = errors[0]
        raise AssertionError(f"unhandled exception in the event loop: {first.get('message')}: {first.get('exception')!r}")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    fn = pyfuncitem.obj
    if not inspect.iscoroutinefunction(fn):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    marker = pyfuncitem.get_closest_marker("timeout")
    timeout = float(marker.args[0]) if marker and marker.args else 60.0
    run_async_test(fn, kwargs, timeout)
    return True


@pytest.fixture
def netns_topology() -> Iterator[Any]:
    """Two namespaces, ``client`` and ``server``, joined by veth (IPv4 + IPv6); removed afterwards.

    See :class:`tunray.testing.netns.Topology`.  Needs root: mark the test ``@pytest.mark.root``.
    """
    from tunray.testing.netns import Topology

    topo = Topology.create()
    try:
        yield topo
    finally:
        topo.remove()


@pytest.fixture
def echo_server() -> Iterator[int]:
    """The :mod:`tunray.testing.echo` servers on loopback; yields the base port."""
    from tunray.testing.echo import local_echo

    with local_echo() as port:
        yield port


@pytest.fixture
def fake_clock() -> Iterator[Any]:
    from tunray.testing.clock import FakeClock

    yield FakeClock()
