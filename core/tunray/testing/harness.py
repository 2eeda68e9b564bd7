"""Starting a whole runtime inside a test."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

from tunray.plugin.manager import PluginManager
from tunray.runtime import Runtime
from tunray.testing import driver


@contextlib.asynccontextmanager
async def running(raw: dict[str, Any], *, extra: Iterable[Any] = (), access_log: Any = None) -> AsyncIterator[Runtime]:
    """Build, start and (always) stop a runtime from a config dict; the driver inbound is available."""
    pm = PluginManager(extra=[driver, *extra])
    kwargs: dict[str, Any] = {}
    if access_log is not None:
        kwargs["access_log"] = access_log
    rt = Runtime.from_raw(raw, pm, **kwargs)
    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop(drain_timeout=1.0)


def driver_of(rt: Runtime, tag: str = "") -> driver.DriverInbound:
    for ib in rt.inbounds:
        if isinstance(ib, driver.DriverInbound) and (not tag or ib.tag == tag):
            return ib
    raise LookupError(f"no driver inbound {tag!r}")
