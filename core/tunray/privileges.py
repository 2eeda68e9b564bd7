"""Dropping root after set-up: ``process.user``/``process.group`` (or ``tunray run -user``).

Theory of operation.  tunray needs root (or CAP_NET_ADMIN) to create a TUN, put addresses
and routes on it and bind sockets to an interface; once the runtime has started, it
needs far less.  :func:`drop` switches every thread of the process to the configured
user and group and leaves only the capabilities the running config still uses
(:func:`needed`), in only the threads that use them:

- Linux capabilities belong to threads, not processes.  glibc applies ``setresuid`` to
  every thread; a thread without ``PR_SET_KEEPCAPS`` then loses all its capabilities
  (the kernel's rule for leaving uid 0), which is what happens to every thread tunray
  does not name (the event loop's resolver pool, the log writer, ...).
- The main thread and the threads an inbound names through ``Inbound.privileged_threads``
  (the TUN inbound's netlink worker, which removes routes and the link at shutdown) set
  ``PR_SET_KEEPCAPS`` first, then, after the switch, ``capset`` permitted = effective =
  the needed set, inheritable empty, drop everything else from their bounding set and
  set ``PR_SET_NO_NEW_PRIVS``.

``ctypes`` over libc (``prctl``, ``capset``), no new dependency: four calls.
Files opened before the drop (TUN, log files, certificates) stay open; anything opened
later (a SIGHUP reload re-reads config files) must be readable by the new user.
"""

from __future__ import annotations

import ctypes
import grp
import os
import platform
import pwd
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loguru import logger

from tunray.config.errors import ConfigError
from tunray.config.schema import Field, Schema, Str

if TYPE_CHECKING:
    from tunray.runtime import Runtime

SECTION = "process"
SCHEMA = Schema(
    Field("user", Str(), default="", doc="user to switch to once started (name or number); empty: stay"),
    Field("group", Str(), default="", doc="group to switch to; empty: the user's primary group"),
    Field("control", Str(), default="",
          doc='Unix socket `tunray stats` reads the counters from; empty: the default path; "off": none'),
)

CAPS = {"CAP_NET_BIND_SERVICE": 10, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13}
_PR_CAPBSET_DROP, _PR_SET_KEEPCAPS, _PR_SET_NO_NEW_PRIVS = 24, 8, 38
_CAP_LAST = 63
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

#: Runs a function in a thread it owns (e.g. ``NetlinkWorker.call``).
ThreadRunner = Callable[[Callable[[], None]], Awaitable[Any]]


class _Header(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _Data(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32))


_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)), "prctl")


_PR_SET_PDEATHSIG, _PR_GET_PDEATHSIG = 1, 2


def set_parent_death_signal(sig: int) -> None:
    """Have the kernel send *sig* to this process when its parent dies (0: never)."""
    _prctl(_PR_SET_PDEATHSIG, sig)


def parent_death_signal() -> int:
    value = ctypes.c_int(0)
    _check(_libc.prctl(_PR_GET_PDEATHSIG, ctypes.byref(value), 0, 0, 0), "prctl(PR_GET_PDEATHSIG)")
    return value.value


def _keep_caps() -> None:
    _prctl(_PR_SET_KEEPCAPS, 1)


def _restrict(mask: int) -> Callable[[], None]:
    """What a privileged thread runs after the switch: keep exactly *mask* and nothing more."""

    def apply() -> None:
        header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
        data = (_Data * 2)()
        data[0].effective = data[0].permitted = mask & 0xFFFFFFFF
        data[1].effective = data[1].permitted = mask >> 32
        _check(_libc.capset(ctypes.byref(header), data), "capset")
        _prctl(_PR_SET_KEEPCAPS, 0)
        _prctl(_PR_SET_NO_NEW_PRIVS, 1)

    return apply


def _drop_bounding(mask: int) -> Callable[[], None]:
    def apply() -> None:
        for cap in range(_CAP_LAST + 1):
            if not mask >> cap & 1:
                rc = _libc.prctl(_PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0)
                if rc != 0 and ctypes.get_errno() != 22:  # EINVAL: beyond this kernel's last cap
                    _check(rc, "prctl(PR_CAPBSET_DROP)")

    return apply


def _bind_needs_net_raw() -> bool:
    """SO_BINDTODEVICE needs CAP_NET_RAW before Linux 5.7, nothing after."""
    try:
        major, minor = (int(x) for x in platform.release().split(".")[:2])
    except ValueError:
        return True
    return (major, minor) < (5, 7)


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    name: str


def identity(user: str, group: str, path: str = SECTION) -> Identity:
    """Look *user*/*group* up (names or numbers); a one-line ConfigError if unknown."""
    try:
        pw = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
    except KeyError:
        raise ConfigError(f"{path}.user", f"no such user {user!r}") from None
    gid = pw.pw_gid
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid if not group.isdigit() else grp.getgrgid(int(group)).gr_gid
        except KeyError:
            raise ConfigError(f"{path}.group", f"no such group {group!r}") from None
    return Identity(pw.pw_uid, gid, pw.pw_name)


def needed(runtime: Runtime) -> set[str]:
    """The capabilities the running config still uses after start-up."""
    caps: set[str] = set()
    for ib in runtime.inbounds:
        caps |= ib.capabilities()
        # listening sockets are bound before the drop, so low ports need nothing later; a
        # TPROXY inbound binds reply sockets to foreign addresses (IP_TRANSPARENT) as it runs
        sockopt = ib.config.stream.settings.sockopt if ib.config.stream is not None else None
        if sockopt is not None and sockopt.tproxy == "tproxy":
            caps.add("CAP_NET_ADMIN")
    for ob in runtime.config.outbounds:
        sockopt = ob.stream.settings.sockopt if ob.stream is not None else None
        if sockopt is None:
            continue
        if sockopt.mark or sockopt.tproxy != "off":
            caps.add("CAP_NET_ADMIN")
        if sockopt.interface and _bind_needs_net_raw():
            caps.add("CAP_NET_RAW")
    if runtime.dialer.controllers and _bind_needs_net_raw():
        caps.add("CAP_NET_RAW")  # autoOutboundsInterface binds every socket to the uplink
    return caps


def mask_of(caps: Iterable[str]) -> int:
    mask = 0
    for cap in caps:
        mask |= 1 << CAPS[cap]
    return mask


async def drop(who: Identity, caps: set[str], threads: list[ThreadRunner]) -> None:
    """Become *who* in every thread, keeping *caps* in the main thread and *threads* only."""
    mask = mask_of(caps)
    for run in threads:
        await run(_keep_caps)
        await run(_drop_bounding(mask))
    _keep_caps()
    _drop_bounding(mask)()
    deathsig = parent_death_signal()
    os.setgroups([])
    os.setresgid(who.gid, who.gid, who.gid)
    os.setresuid(who.uid, who.uid, who.uid)
    if deathsig:  # the kernel clears it on a credential change; a worker keeps dying with its supervisor
        set_parent_death_signal(deathsig)
    _restrict(mask)()
    for run in threads:
        await run(_restrict(mask))
    logger.warning(
        "running as {} (uid {}, gid {}) with {}",
        who.name, who.uid, who.gid, ", ".join(sorted(caps)) or "no capabilities",
    )


async def drop_for(runtime: Runtime, user: str, group: str, path: str = SECTION) -> None:
    """Drop to *user*/*group* after ``runtime.start()`` (nothing to do if *user* is empty)."""
    if not user:
        return
    who = identity(user, group, path)
    if os.geteuid() != 0:
        if os.geteuid() != who.uid:
            logger.warning("{}.user: not running as root; staying uid {}", path, os.geteuid())
        return
    threads: list[ThreadRunner] = []
    for ib in runtime.inbounds:
        threads.extend(ib.privileged_threads())
    await drop(who, needed(runtime), threads)
