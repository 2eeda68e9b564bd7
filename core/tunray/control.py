"""The local control socket: ``tunray run`` serves its counters, ``tunray stats`` prints them.

Theory of operation.

* **Where.**  ``tunray run -control PATH`` or ``process.control`` in the config; ``"off"``
  serves nothing.  Default: ``/run/tunray/tunray.sock`` for root, else
  ``$XDG_RUNTIME_DIR/tunray.sock`` (``/tmp/tunray-UID.sock`` without it).  ``tunray stats
  -socket PATH`` takes the same default, so a root ``tunray stats`` finds a root
  ``tunray run``.
* **Protocol.**  A client connects; the server writes one JSON object (the counters) and
  closes.  Nothing is read from the client, so there is nothing to parse or abuse.
* **Who may ask.**  The socket is created mode 0600 (``fchmod`` before ``bind``, so there
  is no moment with looser rights) and, when ``tunray run`` drops privileges, handed to
  that user (and a directory we created with it), so the dropped process can still serve
  and remove it and the same user can run ``tunray stats``.  A stale socket (nobody
  answers) is replaced; a live one (another tunray) is left alone with one error line.
* **Workers.**  Each worker process serves its own counters: worker *k* > 0 on
  ``PATH.k``, worker 0 on ``PATH``.  Worker 0 answers with every worker's counters: it
  asks its siblings, sums the numbers (:func:`merge`) and adds ``"workers"``, one entry per
  worker (a worker that did not answer, e.g. while it restarts, is listed with its
  error).  Sums are exact for counters and current gauges; a summed ``*_peak`` is the sum
  of the workers' peaks, an upper bound of the peak of the sum.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger

OFF = "off"
ASK_TIMEOUT = 2.0  # seconds worker 0 waits for a sibling, and ``tunray stats`` for an answer


def default_path() -> str:
    """Where ``tunray run`` serves and ``tunray stats`` asks when no path is given."""
    uid = os.geteuid()
    if uid == 0:
        return "/run/tunray/tunray.sock"
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        return os.path.join(runtime_dir, "tunray.sock")
    return f"/tmp/tunray-{uid}.sock"


def worker_path(path: str, worker: int) -> str:
    """The socket worker *worker* serves: *path* itself for worker 0 (it answers for all)."""
    return path if worker == 0 else f"{path}.{worker}"


def merge(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum numbers, merge nested objects, union lists (of names) over every snapshot."""
    total: dict[str, Any] = {}
    for snap in snapshots:
        _add(total, snap)
    return total


def _add(into: dict[str, Any], src: dict[str, Any]) -> None:
    for key, value in src.items():
        if key in ("pid", "worker"):
            continue
        if isinstance(value, bool):
            into[key] = bool(into.get(key, False)) or value
        elif isinstance(value, (int, float)):
            into[key] = into.get(key, 0) + value
        elif isinstance(value, dict):
            _add(into.setdefault(key, {}), value)
        elif isinstance(value, list):
            into[key] = sorted(set(into.get(key, [])) | {str(v) for v in value})
        else:
            into.setdefault(key, value)


async def fetch(path: str, timeout: float = ASK_TIMEOUT) -> dict[str, Any]:
    """The JSON object served on *path*."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            data = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    result: dict[str, Any] = json.loads(data)
    return result


def _in_use(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def _listen(path: str) -> socket.socket | None:
    """A listening socket on *path* (mode 0600), replacing a stale one; None if another process serves it."""
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=0o755, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{path} exists and is not a socket")
        if _in_use(path):
            return None
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.fchmod(sock.fileno(), 0o600)  # the file bind creates gets these rights from the start
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(16)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class ControlServer:
    """Serves ``snapshot()`` as JSON on a Unix socket until :meth:`close`."""

    def __init__(self, path: str, snapshot: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        self.path = path
        self._snapshot = snapshot
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> bool:
        """Bind and serve; False (logged once) if the path cannot be served."""
        try:
            sock = _listen(self.path)
        except OSError as exc:
            logger.error("control socket {}: {}; `tunray stats` will not reach this process", self.path, exc)
            return False
        if sock is None:
            logger.error("control socket {} is served by another running tunray; not serving it", self.path)
            return False
        self._server = await asyncio.start_unix_server(self._answer, sock=sock)
        return True

    def hand_to(self, uid: int, gid: int) -> None:
        """Before dropping privileges: let *uid* serve, remove and ask (socket and its directory)."""
        if self._server is None:
            return
        with contextlib.suppress(OSError):
            os.chown(self.path, uid, gid)
        parent = os.path.dirname(self.path)
        with contextlib.suppress(OSError):
            if parent and os.stat(parent).st_uid == 0 and os.path.basename(parent) == "tunray":
                os.chown(parent, uid, gid)  # our own /run/tunray: the dropped process removes its socket

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            snap = await self._snapshot()
            writer.write(json.dumps(snap, sort_keys=True, default=str).encode() + b"\n")
            await writer.drain()
        except Exception as exc:  # a client that went away, or a bug: never take the process down
            logger.debug("control socket: {}", exc)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        with contextlib.suppress(OSError):
            await server.wait_closed()
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)


def snapshot_source(own: Callable[[], dict[str, Any]], path: str, worker: int | None,
                    workers: int) -> Callable[[], Awaitable[dict[str, Any]]]:
    """What the control socket of this process answers (see the module docstring for workers)."""

    async def single() -> dict[str, Any]:
        return {**own(), "pid": os.getpid()}

    async def sibling() -> dict[str, Any]:
        return {**own(), "pid": os.getpid(), "worker": worker}

    async def everyone() -> dict[str, Any]:
        mine = {**own(), "pid": os.getpid(), "worker": 0}

        async def ask(k: int) -> dict[str, Any]:
            try:
                return await fetch(worker_path(path, k))
            except (OSError, TimeoutError, ValueError) as exc:
                return {"worker": k, "error": str(exc) or type(exc).__name__}

        others = await asyncio.gather(*(ask(k) for k in range(1, workers)))
        every = [mine, *others]
        return {**merge([s for s in every if "error" not in s]), "workers": every}

    if worker is None:
        return single
    return everyone if worker == 0 else sibling


def stats_command(path: str | None) -> int:
    """``tunray stats``: print the counters of the ``tunray run`` serving *path*."""
    where = path or default_path()
    try:
        snap = asyncio.run(fetch(where))
    except (OSError, TimeoutError) as exc:
        print(f"tunray stats: cannot reach {where}: {exc or 'no answer'}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"tunray stats: {where} answered something that is not JSON: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(snap, indent=2, sort_keys=True))
    return 0
