"""Warn about config files that someone other than their owner can change.

Whoever can write a config file (or a certificate, key or other file it names) decides
where tunray sends traffic and what it trusts, and tunray usually runs as root: a file
that is group- or world-writable, or owned by a user other than the one running tunray
or root, is reported at start-up and by ``tunray run -test`` (a warning, not an error:
some deployments put configs on file systems without Unix modes).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from typing import Any

#: Keys whose string values name files tunray reads (compared lower-case).
FILE_KEYS = frozenset({"certificatefile", "keyfile", "cafile", "certfile", "file", "path_file"})


def named_files(raw: Any) -> Iterator[str]:
    """Every file a config names for tunray to read (certificates, keys, ...)."""
    if isinstance(raw, dict):
        for key, value in raw.items():
            if isinstance(value, str) and value and key.lower() in FILE_KEYS:
                yield value
            elif isinstance(value, list) and key.lower() in FILE_KEYS:
                yield from (v for v in value if isinstance(v, str) and v)
            else:
                yield from named_files(value)
    elif isinstance(raw, list):
        for item in raw:
            yield from named_files(item)


def problem(path: str) -> str | None:
    """Why *path* is unsafe to trust, or None (also None if it cannot be examined)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = "everyone" if mode & stat.S_IWOTH else "its group"
        return f"is writable by {who} (mode {mode:04o})"
    if st.st_uid not in (0, os.geteuid()):
        return f"belongs to uid {st.st_uid}, not to root or the user running tunray"
    return None


def unsafe_files(config_files: Iterable[str], raw: Any) -> list[str]:
    """One line per config file or named file (and their directories) others can change."""
    lines: list[str] = []
    seen: set[str] = set()
    for path in [*config_files, *named_files(raw)]:
        if path in ("-", "stdin:"):
            continue
        for target in (path, os.path.dirname(os.path.abspath(path))):
            if target in seen:
                continue
            seen.add(target)
            why = problem(target)
            if why is not None and not (target != path and _sticky(target)):
                lines.append(f"{target} {why}: whoever can change it controls tunray")
    return lines


def _sticky(directory: str) -> bool:
    """/tmp-like directories (sticky bit): others cannot replace files they do not own."""
    try:
        return bool(os.stat(directory).st_mode & stat.S_ISVTX)
    except OSError:
        return False
