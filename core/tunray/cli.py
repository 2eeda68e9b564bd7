"""``tunray`` command line, shaped like Xray's (``run -c``, ``-confdir``, ``-test``, ``uuid``).

User mistakes (config, plugins) print one line and exit non-zero without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from typing import Any

from tunray import __version__
from tunray.config.errors import EXIT_CONFIG, ConfigError
from tunray.plugin.registry import PluginError

EXIT_PLUGIN = 24


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunray", description="A plugin-based proxy framework modelled on Xray-core.")
    sub = p.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run with the given config files")
    run.add_argument("-c", "-config", dest="config", action="append", default=[], help="config file (repeatable)")
    run.add_argument("-confdir", default=None, help="directory of config files, loaded in name order")
    run.add_argument("-format", default="auto", help="json, yaml, toml or auto (by extension)")
    run.add_argument("-test", action="store_true", help="validate the config and exit")
    run.add_argument("-dump", action="store_true", help="print the merged config and exit")
    run.add_argument(
        "-drain", type=float, default=None, metavar="SECONDS",
        help="on SIGTERM/SIGINT, seconds running flows get to finish before they are reset (default 3)",
    )
    sub.add_parser("version", help="print the version and every loaded plugin")
    sub.add_parser("plugins", help="list registered protocols, stacks and transports with their plugins")
    uid = sub.add_parser("uuid", help="generate a UUID, or map a string to Xray's UUIDv5")
    uid.add_argument("-i", dest="input", default=None, help="string to map")
    new = sub.add_parser("new-plugin", help="write a ready-to-build plugin distribution")
    new.add_argument("kind", choices=("inbound", "outbound", "stack", "transport", "security"))
    new.add_argument("name")
    new.add_argument("-o", dest="out", default=".")
    return p


def _version() -> int:
    from tunray.plugin.manager import PluginManager

    pm = PluginManager()
    print(f"tunray {__version__} (Python {sys.version.split()[0]})")
    for info in pm.infos:
        print(f"  {info.name:<24} {info.distribution} {info.version}".rstrip())
    return 0


def _plugins() -> int:
    from tunray.plugin.manager import PluginManager

    pm = PluginManager()
    reg = pm.registry
    for kind, table, owner_kind in (
        ("inbound", reg.inbounds, "inbound protocol"),
        ("outbound", reg.outbounds, "outbound protocol"),
        ("stack", reg.stacks, "stack"),
        ("transport", reg.transports, "transport"),
    ):
        for name in sorted(table):
            print(f"{kind:<10} {name:<16} {reg.owner(owner_kind, name)}")
    return 0


def _uuid(text: str | None) -> int:
    import uuid

    from tunray.net.uuid import from_text

    if text is None:
        print(uuid.uuid4())
        return 0
    try:
        print(from_text(text))
    except ValueError as exc:
        print(f"tunray uuid: {exc}", file=sys.stderr)
        return 1
    return 0


def _config_phase_log() -> None:
    """Until the config's own log settings apply: warnings in the one-line error form."""
    from loguru import logger

    def sink(message: Any) -> None:
        text = message.record["message"]
        if text.startswith("config: "):
            text = "config warning: " + text[len("config: ") :]
        else:
            text = f"{message.record['level'].name.lower()}: {text}"
        sys.stderr.write(text + "\n")

    logger.remove()
    logger.add(sink, level="WARNING")


def _run(args: argparse.Namespace) -> int:
    import json

    from tunray.config.loader import load
    from tunray.config.model import build_config
    from tunray.log import configure_error_log
    from tunray.plugin.manager import PluginManager

    _config_phase_log()
    raw = load(args.config, args.confdir, args.format)
    if args.dump:
        print(json.dumps(raw, indent=2))
        return 0
    pm = PluginManager()
    config = build_config(raw, pm.registry)
    pm.configure(config)
    if args.test:
        print("Configuration OK.")
        return 0
    configure_error_log(config.log)
    from tunray.runtime import Runtime

    _raise_nofile()
    runtime = Runtime(config, pm)
    count = 1
    # SIGTERM waits while an inbound sets up what worker processes share (a TUN's routes):
    # the supervisor then handles it; a single process gets it back before its loop starts.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        for ib in runtime.inbounds:
            wanted = ib.prepare_workers()
            if wanted > 1 and count > 1:
                raise ConfigError(ib.config.path, "only one inbound may run worker processes")
            count = max(count, wanted)
    except BaseException:
        for ib in runtime.inbounds:
            ib.leave_workers()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        raise
    if count == 1:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return _serve(runtime, args.drain)
    return _serve_workers(runtime, count, args.drain, mask)


def _raise_nofile() -> None:
    """Lift the soft descriptor limit to the hard one, as Go programs (sing-box) do at start:
    a ``system`` stack flow holds two sockets (the accepted one and the outbound's)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def _serve_workers(runtime: object, count: int, drain: float | None, mask: set[int | signal.Signals]) -> int:
    """Fork *count* workers, each serving the runtime with its own loop (see :mod:`tunray.workers`)."""
    from tunray.runtime import DRAIN_TIMEOUT, Runtime
    from tunray.workers import KILL_AFTER, SharedCounters, run_workers

    assert isinstance(runtime, Runtime)
    try:  # what every worker imports anyway, imported once here so the pages are shared
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover
        pass
    shared = SharedCounters(runtime.stat_keys(), count)
    inbounds = list(runtime.inbounds)

    def child(k: int) -> int:
        runtime.inbounds = [ib for ib in inbounds if ib.enter_worker(k, count)]
        runtime.stats = shared.for_worker(k)
        return _serve(runtime, drain)

    def release() -> None:
        for ib in inbounds:
            ib.leave_workers()

    drain_timeout = DRAIN_TIMEOUT if drain is None else max(drain, 0.0)
    return run_workers(count, child, release, kill_after=min(drain_timeout + 1.0, KILL_AFTER), mask=mask)


def _serve(runtime: object, drain: float | None = None) -> int:
    from loguru import logger

    from tunray.runtime import DRAIN_TIMEOUT, Runtime

    assert isinstance(runtime, Runtime)
    drain_timeout = DRAIN_TIMEOUT if drain is None else max(drain, 0.0)

    async def main() -> None:
        from tunray import workers

        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        release = asyncio.Event()
        if workers.in_worker():
            loop.add_signal_handler(workers.RELEASE, release.set)
        await runtime.start()
        logger.warning("tunray {} started", __version__)
        await stop.wait()
        logger.warning("tunray stopping")
        try:
            async with asyncio.timeout(drain_timeout + 2.0):
                if workers.in_worker():
                    # drain, then keep refusing new flows until every worker has drained
                    # (tunray.workers): a SYN steered to this queue still gets its RST
                    await runtime.stop_accepting()
                    await runtime.dispatcher.drain(drain_timeout)
                    workers.drained()
                    await release.wait()
                await runtime.stop(drain_timeout=drain_timeout)
        except TimeoutError:
            logger.error("shutdown took longer than {:g} s; exiting anyway", drain_timeout + 2.0)

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:  # pragma: no cover
        asyncio.run(main())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "version":
            return _version()
        if args.command == "plugins":
            return _plugins()
        if args.command == "uuid":
            return _uuid(args.input)
        if args.command == "new-plugin":
            from tunray.scaffold import write_plugin

            print(write_plugin(args.kind, args.name, args.out))
            return 0
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except PluginError as exc:
        print(f"plugin error: {exc}", file=sys.stderr)
        return EXIT_PLUGIN
    except OSError as exc:
        if getattr(exc, "errno", None) is not None and exc.strerror:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise
    _parser().print_help()
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
