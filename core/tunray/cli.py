"""``tunray`` command line, shaped like Xray's (``run -c``, ``-confdir``, ``-test``, ``uuid``, ``x25519``).

User mistakes (config, plugins) print one line and exit non-zero without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tunray import __version__
from tunray.config.errors import EXIT_CONFIG, ConfigError
from tunray.plugin.registry import PluginError

if TYPE_CHECKING:
    from tunray.config.model import Config
    from tunray.runtime import Runtime

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
    run.add_argument("-user", default=None, help="switch to this user once started (overrides process.user)")
    run.add_argument("-group", default=None, help="and this group (overrides process.group)")
    run.add_argument("-control", default=None, metavar="PATH",
                     help='Unix socket for `tunray stats` (overrides process.control; "off": none)')
    stats = sub.add_parser("stats", help="print the counters of a running `tunray run` as JSON")
    stats.add_argument("-socket", dest="socket", default=None, metavar="PATH",
                       help="its control socket (default: /run/tunray/tunray.sock as root, else "
                            "$XDG_RUNTIME_DIR/tunray.sock)")
    tfd = sub.add_parser(
        "tun-fd", help="attach to a persistent TUN and run COMMAND with XRAY_TUN_FD set (for supervisors)"
    )
    tfd.add_argument("name", help="the persistent TUN (ip tuntap add dev NAME mode tun user USER)")
    tfd.add_argument("argv", nargs=argparse.REMAINDER, metavar="COMMAND", help="e.g. tunray run -c config.json")
    sub.add_parser("version", help="print the version and every loaded plugin")
    sub.add_parser("plugins", help="list registered protocols, stacks and transports with their plugins")
    uid = sub.add_parser("uuid", help="generate a UUID, or map a string to Xray's UUIDv5")
    uid.add_argument("-i", dest="input", default=None, help="string to map")
    x25519 = sub.add_parser("x25519", help="generate an X25519 key pair for REALITY (as xray x25519)")
    x25519.add_argument("-i", dest="input", default=None, help="private key (base64url) to derive the public key of")
    x25519.add_argument("--std-encoding", "-std-encoding", dest="std", action="store_true", help="standard base64")
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


def _tun_fd(name: str, argv: list[str]) -> int:
    """Open TUN *name* and exec *argv* with the fd in ``XRAY_TUN_FD`` (never returns on success)."""
    import os

    from tunray.net.tun import attach_persistent

    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("tunray tun-fd: no command given", file=sys.stderr)
        return 2
    fd = attach_persistent(name)
    os.environ["XRAY_TUN_FD"] = str(fd)
    os.execvp(argv[0], argv)
    return 1  # pragma: no cover


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


def _unsafe_files(args: argparse.Namespace, raw: dict[str, object]) -> list[str]:
    from tunray.config.loader import confdir_files
    from tunray.config.perms import unsafe_files

    files = list(args.config) + (confdir_files(args.confdir) if args.confdir else [])
    return unsafe_files(files, raw)


def _x25519(text: str | None, std: bool) -> int:
    from tunray.x25519 import render

    try:
        print(render(text, std))
    except ValueError as exc:
        print(f"tunray x25519: {exc}", file=sys.stderr)
        return 1
    return 0


def _run(args: argparse.Namespace) -> int:
    import json

    from loguru import logger

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
    unsafe = _unsafe_files(args, raw)
    proc = config.extra.get("process")
    user = args.user if args.user is not None else (proc.user if proc is not None else "")
    group = args.group if args.group is not None else (proc.group if proc is not None else "")
    control = args.control if args.control is not None else (proc.control if proc is not None else "")
    if not control:
        from tunray.control import default_path

        control = default_path()
    if user:
        from tunray.privileges import identity

        identity(user, group, "-user" if args.user is not None else "process")  # an unknown name fails -test too
    if args.test:
        for line in unsafe:
            logger.warning("config: {}", line)  # "config warning: ..." on stderr
        print("Configuration OK.")
        return 0
    configure_error_log(config.log)
    for line in unsafe:
        logger.warning("config: {}", line)
    from tunray.runtime import Runtime

    _raise_nofile()
    runtime = Runtime(config, pm)

    def reread() -> Config:
        """The config files again, validated exactly as at start (for SIGHUP)."""
        raw = load(args.config, args.confdir, args.format)
        new = build_config(raw, pm.registry)
        pm.configure(new)
        for line in _unsafe_files(args, raw):
            logger.warning("config: {}", line)
        return new

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
        return _serve(runtime, args.drain, reread, (user, group), control)
    return _serve_workers(runtime, count, args.drain, mask, reread, (user, group), control)


#: The cyclic GC's first threshold while serving (Python's default: 700).
GC_THRESHOLD0 = 7000


def _settle_gc() -> None:
    """Once started: move every object alive now (modules, config, plugins) out of the cyclic
    GC's sight, and collect the youngest generation ten times less often.

    A flow's objects are nearly all freed by reference counting; what the collector does
    per flow is rescan the ~60,000 start-up objects (full collections) and the young flows
    in flight.  ``bench/bench_cps.py`` on the system stack, GC time measured with
    ``gc.callbacks``: 27 µs per connection before, 8.5 after the freeze alone, 0.5 with both.
    The price: a frozen object that later ends up in a garbage cycle is never collected
    (a SIGHUP reload's old routing and outbounds, if they hold cycles), which is bounded by
    what a config builds; unfreezing to collect them would make the workers copy the pages
    they share.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD0, *gc.get_threshold()[1:])


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


def _serve_workers(runtime: Runtime, count: int, drain: float | None, mask: set[int | signal.Signals],
                   reread: Callable[[], Config], drop_to: tuple[str, str], control: str) -> int:
    """Fork *count* workers, each serving the runtime with its own loop (see :mod:`tunray.workers`).

    Each worker reloads on SIGHUP and logs its counters on SIGUSR1 (the supervisor passes
    both on) and drops privileges as a single process does; the supervisor keeps them, to
    remove the link at the end.
    """
    from tunray.runtime import DRAIN_TIMEOUT
    from tunray.workers import EXIT_FATAL, KILL_AFTER, SharedCounters, run_workers

    try:  # what every worker imports anyway, imported once here so the pages are shared
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover
        pass
    shared = SharedCounters(runtime.stat_keys(), count)
    inbounds = list(runtime.inbounds)

    def child(k: int) -> int:
        runtime.inbounds = [ib for ib in inbounds if ib.enter_worker(k, count)]
        runtime.stats = shared.for_worker(k)
        code = _serve(runtime, drain, reread, drop_to, control)
        return EXIT_FATAL if code == 1 else code  # no inbound left: the supervisor stops all

    def release() -> None:
        for ib in inbounds:
            ib.leave_workers()

    drain_timeout = DRAIN_TIMEOUT if drain is None else max(drain, 0.0)
    return run_workers(count, child, release, kill_after=min(drain_timeout + 1.0, KILL_AFTER), mask=mask)


async def _reload(runtime: Runtime, reread: Callable[[], Config]) -> None:
    """SIGHUP: validate the files again; apply them, or log one line and keep running."""
    from loguru import logger

    try:
        config = reread()
        await runtime.reload(config)
    except ConfigError as exc:
        logger.error("reload failed, keeping the running config: config error: {}", exc)
    except PluginError as exc:
        logger.error("reload failed, keeping the running config: plugin error: {}", exc)
    except Exception as exc:  # a bug: keep its traceback, keep serving
        logger.opt(exception=exc).error("reload failed, keeping the running config: {}", exc)
    else:
        logger.warning("configuration reloaded ({} outbounds); running flows finish on the previous one",
                       len(config.outbounds))


def _serve(
    runtime: Runtime,
    drain: float | None = None,
    reread: Callable[[], Config] | None = None,
    drop_to: tuple[str, str] = ("", ""),
    control: str = "off",
) -> int:
    from loguru import logger

    from tunray.runtime import DRAIN_TIMEOUT

    drain_timeout = DRAIN_TIMEOUT if drain is None else max(drain, 0.0)
    exit_code = [0]  # 1 when every inbound failed (a supervisor should restart us)

    async def main() -> None:
        from tunray import workers

        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        release = asyncio.Event()
        if workers.in_worker():
            loop.add_signal_handler(workers.RELEASE, release.set)
        reloads: set[asyncio.Task[None]] = set()
        reloading = asyncio.Lock()  # one reload at a time, in signal order

        async def reload_once() -> None:
            async with reloading:
                if reread is not None and not stop.is_set():
                    await _reload(runtime, reread)

        def on_hup() -> None:
            task = loop.create_task(reload_once())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)

        def on_usr1() -> None:  # "tunray stats": one JSON line with every counter
            import json

            logger.warning("stats {}", json.dumps(runtime.snapshot(), sort_keys=True, default=str))

        loop.add_signal_handler(signal.SIGUSR1, on_usr1)
        await runtime.start()
        server = None
        if control != "off":
            from tunray.control import ControlServer, snapshot_source, worker_path

            where = workers.worker_index()
            path = worker_path(control, where[0]) if where else control
            server = ControlServer(path, snapshot_source(runtime.snapshot, control, *(where or (None, 1))))
            await server.start()
        if drop_to[0]:
            from tunray.privileges import drop_for, identity

            if server is not None:
                who = identity(*drop_to)
                server.hand_to(who.uid, who.gid)

            try:
                await drop_for(runtime, *drop_to)
            except Exception as exc:
                logger.error("cannot drop privileges to {}: {}; stopping", drop_to[0], exc)
                await runtime.stop(drain_timeout=0.0)
                raise SystemExit(1) from None
        from tunray.memory import Trimmer

        trimmer = Trimmer()  # freed buffers go back to the kernel after a burst (tunray.memory)
        trimmer.start()
        logger.warning("tunray {} started", __version__)
        _settle_gc()
        waits = [loop.create_task(stop.wait()), loop.create_task(runtime.no_inbound_left.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        if runtime.no_inbound_left.is_set():
            exit_code[0] = 1
        trimmer.stop()
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
        if server is not None:
            await server.close()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:  # pragma: no cover
        asyncio.run(main())
    return exit_code[0]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "tun-fd":
            return _tun_fd(args.name, args.argv)
        if args.command == "stats":
            from tunray.control import stats_command

            return stats_command(args.socket)
        if args.command == "version":
            return _version()
        if args.command == "plugins":
            return _plugins()
        if args.command == "uuid":
            return _uuid(args.input)
        if args.command == "x25519":
            return _x25519(args.input, args.std)
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
