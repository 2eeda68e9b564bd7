"""Worker processes: one supervisor, N forked workers, each with its own event loop.

Theory of operation.  ``tunray run`` builds the config and the :class:`~tunray.runtime.Runtime`
(constructors open nothing) and asks every inbound how many workers it wants
(:meth:`~tunray.inbound.Inbound.prepare_workers`; the TUN inbound opens its queues and
configures the link there).  With more than one, :func:`run_workers` forks that many
children *before any event loop exists*: every module is imported already, so the
children share those pages with the supervisor copy-on-write, and nothing of a running
loop (epoll fds, threads) is inherited.  Child ``k`` calls
:meth:`~tunray.inbound.Inbound.enter_worker` on every inbound (the TUN inbound keeps
queue ``k``; other inbounds run in worker 0 only) and then runs the runtime exactly as a
single process would, with its own dispatcher and outbounds.

The supervisor runs no loop.  It blocks SIGCHLD, SIGTERM, SIGINT, SIGHUP and SIGUSR1 and
waits for them with ``sigtimedwait``; SIGHUP (reload) and SIGUSR1 (counters) are passed on
to every worker:

* a worker that dies is logged (exit code or signal) and forked again; its flows are
  lost, the others continue.  A worker that exits with :data:`EXIT_FATAL` (no inbound
  left: the TUN is gone) stops them all instead, and the supervisor exits 1;  A worker dying within :data:`FLAPPING` seconds of its
  start :data:`MAX_FLAPS` times in a row stops everything (a broken config or host);
* SIGTERM/SIGINT is passed on to every worker, which stops accepting (new flows get a
  RST) and drains (``-drain``), then reports through a pipe (:func:`drained`) and waits.
  Once every worker has drained the supervisor releases them all (:data:`RELEASE`) and
  they stop their inbounds and exit: until then no queue is left without a reader, so a
  SYN steered to an idle worker is still refused rather than lost.  Whatever is still
  alive :data:`KILL_AFTER` seconds after the signal is killed, then the inbounds release
  what the supervisor holds (:meth:`~tunray.inbound.Inbound.leave_workers`), so the whole
  stop stays within 5 s.

Shared state.  The access log is one file opened with ``O_APPEND`` (or the inherited
stdout): every line is one ``write(2)``, so lines from different workers never
interleave.  Traffic counters (``Runtime.stats``) live in :class:`SharedCounters`, one
row per worker in shared memory, summed when read.
"""

from __future__ import annotations

import gc
import mmap
import os
import signal
import struct
import sys
import time
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence

from loguru import logger

from tunray.privileges import set_parent_death_signal

#: In a worker: (index, the pipe's write end to the supervisor); None in the supervisor.
_worker: tuple[int, int] | None = None
_count = 1  # workers the supervisor runs (in a worker)
RELEASE = signal.SIGUSR2  # supervisor -> workers: every worker has drained, finish stopping

#: A worker exiting with this code asks the supervisor to stop everything and exit 1 (its
#: inbounds failed for good, e.g. the TUN was deleted: restarting cannot help).
EXIT_FATAL = 75

KILL_AFTER = 4.5  # seconds from SIGTERM to SIGKILL, at most (the link is released after)
FLAPPING = 2.0
MAX_FLAPS = 5
_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1}
_PASSED_ON = (signal.SIGHUP, signal.SIGUSR1)  # reload, log counters: every worker does it


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


def run_workers(count: int, child: Callable[[int], int], release: Callable[[], None],
                kill_after: float = KILL_AFTER, mask: Iterable[int] | None = None) -> int:
    """Fork *count* workers running ``child(k)`` and supervise them; see the module docstring.

    *release* runs in the supervisor after every worker is gone.  *mask*: the signal mask
    workers run with (and the caller gets back), when the caller blocked SIGTERM already
    (while the link was set up); default: the mask at the call.  Returns the exit code.
    """
    # Objects alive now are shared with every worker copy-on-write; the cyclic GC would write
    # to (and so copy) every page it scans, so move them out of its sight first.
    gc.collect()
    gc.freeze()
    report_r, report_w = os.pipe()
    os.set_blocking(report_r, False)
    drained_set: set[int] = set()
    released = False
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    if mask is not None:
        old_mask = set(mask)
    pids: dict[int, int] = {}  # pid -> worker index
    started: dict[int, float] = {}
    flaps = [0] * count

    supervisor = os.getpid()

    def spawn(k: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            global _worker
            code = 1
            try:
                # A worker never outlives its supervisor, even one killed with SIGKILL (which
                # runs no clean-up): the kernel kills it too.  Checked after setting it, in
                # case the supervisor died in between.
                set_parent_death_signal(signal.SIGKILL)
                if os.getppid() != supervisor:
                    os._exit(1)
                os.close(report_r)
                global _count
                _worker = (k, report_w)
                _count = count
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
                code = child(k)
            except BaseException as exc:  # a worker never returns into the supervisor's code
                logger.opt(exception=exc).error("worker {} failed: {}", k, exc)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        pids[pid] = k
        started[k] = time.monotonic()

    code = 0
    try:
        for k in range(count):
            spawn(k)
        logger.info("{} workers started (pids {})", count, " ".join(map(str, pids)))
        stopping = False
        deadline = 0.0
        while pids:
            timeout = 1.0 if not stopping else min(0.05, max(0.0, deadline - time.monotonic()))
            info = signal.sigtimedwait(_SIGNALS, timeout)
            if stopping and not released:
                try:
                    drained_set.update(os.read(report_r, 256))
                except BlockingIOError:
                    pass
                if all(k in drained_set for k in pids.values()):
                    released = True
                    for pid in pids:
                        _kill(pid, RELEASE)
            if info is not None and info.si_signo in _PASSED_ON and not stopping:
                for pid in pids:
                    _kill(pid, info.si_signo)
            if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT) and not stopping:
                stopping = True
                deadline = time.monotonic() + kill_after
                logger.warning("tunray stopping {} workers", len(pids))
                for pid in pids:
                    _kill(pid, signal.SIGTERM)
            for pid, status in _reap():
                if pid not in pids:
                    continue
                k = pids.pop(pid)
                if stopping:
                    if status:
                        logger.info("worker {} (pid {}) {}", k, pid, _describe(status))
                    continue
                if os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_FATAL:
                    logger.error("worker {} (pid {}) has no inbound left; stopping", k, pid)
                    code = 1
                    stopping = True
                    deadline = time.monotonic() + kill_after
                    for other in pids:
                        _kill(other, signal.SIGTERM)
                    continue
                logger.error("worker {} (pid {}) {}; restarting it (its flows are lost)", k, pid, _describe(status))
                flaps[k] = flaps[k] + 1 if time.monotonic() - started[k] < FLAPPING else 0
                if flaps[k] >= MAX_FLAPS:
                    logger.error("worker {} keeps dying at start; stopping", k)
                    code = 1
                    stopping = True
                    deadline = time.monotonic() + kill_after
                    for other in pids:
                        _kill(other, signal.SIGTERM)
                    continue
                spawn(k)
            if stopping and time.monotonic() >= deadline and pids:
                logger.error("{} worker(s) still running after {:g} s: killed", len(pids), kill_after)
                for pid in pids:
                    _kill(pid, signal.SIGKILL)
                for pid in list(pids):
                    os.waitpid(pid, 0)
                    pids.pop(pid)
    finally:
        for pid in pids:  # only on an unexpected error in the loop above
            _kill(pid, signal.SIGKILL)
        os.close(report_r)
        os.close(report_w)
        release()
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    return code


def in_worker() -> bool:
    """True in a worker process forked by :func:`run_workers`."""
    return _worker is not None


def worker_index() -> tuple[int, int] | None:
    """In a worker: (its index, how many workers there are); None in a single process."""
    return (_worker[0], _count) if _worker is not None else None


def drained() -> None:
    """In a worker: tell the supervisor this worker's flows are drained (then wait for :data:`RELEASE`)."""
    if _worker is not None:
        try:
            os.write(_worker[1], bytes((_worker[0] & 0xFF,)))
        except OSError:
            pass


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap() -> Iterator[tuple[int, int]]:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status


# --- shared counters ----------------------------------------------------------------------------------


class SharedCounters(MutableMapping[str, int]):
    """Integer counters shared by forked workers: one row per worker in anonymous shared memory.

    Keys are fixed at creation (Xray's traffic counter names come from the config's tags).
    A worker's view (:meth:`for_worker`) reads and writes only its own row, so
    ``c[k] = c.get(k, 0) + n`` never races with another worker; the view this constructor
    returns sums every row and is read-only.  An unknown key stays in a private dict.
    """

    _Q = struct.Struct("q")

    def __init__(self, keys: Sequence[str], rows: int, row: int | None = None,
                 shared: tuple[mmap.mmap, dict[str, int]] | None = None) -> None:
        if shared is None:
            index = {k: i for i, k in enumerate(dict.fromkeys(keys))}
            mem = mmap.mmap(-1, max(1, len(index) * rows) * 8, flags=mmap.MAP_SHARED)
            shared = (mem, index)
        self._mem, self._index = shared
        self._rows = rows
        self._row = row
        self._local: dict[str, int] = {}

    def for_worker(self, row: int) -> SharedCounters:
        """The view worker *row* counts through."""
        return SharedCounters((), self._rows, row, (self._mem, self._index))

    def _off(self, key: str, row: int) -> int:
        return (row * len(self._index) + self._index[key]) * 8

    def __getitem__(self, key: str) -> int:
        if key not in self._index:
            return self._local[key]
        rows = range(self._rows) if self._row is None else (self._row,)
        return sum(self._Q.unpack_from(self._mem, self._off(key, r))[0] for r in rows)

    def __setitem__(self, key: str, value: int) -> None:
        if key not in self._index:
            self._local[key] = value
            return
        if self._row is None:
            raise TypeError("the summed view of shared counters is read-only")
        self._Q.pack_into(self._mem, self._off(key, self._row), value)

    def __delitem__(self, key: str) -> None:
        raise TypeError("shared counters cannot be deleted")

    def __iter__(self) -> Iterator[str]:
        yield from (k for k in self._index if self[k])
        yield from self._local

    def __len__(self) -> int:
        return sum(1 for _ in self)


# --- memory ----------------------------------------------------------------------------------------------


def pss_kib(pid: int) -> int:
    """The process's proportional set size (``Pss:`` of ``/proc/PID/smaps_rollup``), KiB."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def process_tree(pid: int) -> list[int]:
    """*pid* and all its descendants (from ``/proc/*/stat``)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def total_pss_kib(pid: int) -> int:
    """PSS summed over *pid* and its descendants (shared pages are counted once in total)."""
    total = 0
    for p in process_tree(pid):
        try:
            total += pss_kib(p)
        except OSError:
            pass
    return total


def unique_resident_kib(pid: int) -> int:
    """Distinct physical pages resident in *pid* and its descendants, KiB (root only).

    PSS divides a shared page among *every* process mapping it, so a proxy's PSS shrinks
    when unrelated processes (other Pythons, another sing-box) map the same library pages.
    This counts each physical page the group keeps resident exactly once, whoever else
    shares it: for one process it equals its RSS.  Read from ``/proc/PID/pagemap``
    (page frame numbers need CAP_SYS_ADMIN), walking only mappings with resident pages.
    """
    page = os.sysconf("SC_PAGE_SIZE")
    frames: set[int] = set()
    for p in process_tree(pid):
        try:
            ranges = _resident_ranges(p)
            with open(f"/proc/{p}/pagemap", "rb") as pm:
                for start, end in ranges:
                    pm.seek(start // page * 8)
                    raw = pm.read((end - start) // page * 8)
                    for (entry,) in struct.iter_unpack("<Q", raw):
                        if entry >> 63:  # present
                            pfn = entry & ((1 << 55) - 1)
                            if pfn == 0:
                                raise PermissionError("pagemap hides frame numbers: needs root")
                            frames.add(pfn)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return len(frames) * page // 1024


def _resident_ranges(pid: int) -> list[tuple[int, int]]:
    """Address ranges of *pid*'s mappings that have resident pages (from ``/proc/PID/smaps``)."""
    out: list[tuple[int, int]] = []
    span: tuple[int, int] | None = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(" ", 1)[0]
            if "-" in head and ":" not in head:
                lo, _, hi = head.partition("-")
                span = (int(lo, 16), int(hi, 16))
            elif line.startswith("Rss:") and span is not None:
                if int(line.split()[1]):
                    out.append(span)
                span = None
    return out
