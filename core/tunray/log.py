"""Logging: Xray's error log (levels) through loguru, and its access log format.

Access lines look like Xray's so existing log tooling keeps working::

    2026/11/23 12:00:00.123456 from tcp:10.0.0.2:50312 accepted tcp:example.com:443 [tun-in -> proxy]
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from loguru import logger

from tunray.config.schema import Settings

_LEVELS = {"debug": "DEBUG", "info": "INFO", "warning": "WARNING", "error": "ERROR"}
_FORMAT = "{time:YYYY/MM/DD HH:mm:ss.SSSSSS} [{level}] {message}"


def configure_error_log(log: Settings) -> None:
    logger.remove()
    if log.loglevel == "none" or log.error == "none":
        return
    level = _LEVELS[log.loglevel]
    if log.error:
        logger.add(log.error, level=level, format=_FORMAT, enqueue=False)
    else:
        logger.add(sys.stderr, level=level, format=_FORMAT)


class AccessLog:
    """Writes one line per flow; ``None`` target means off."""

    __slots__ = ("_out",)

    def __init__(self, out: IO[str] | None) -> None:
        self._out = out

    @classmethod
    def from_settings(cls, log: Settings) -> AccessLog:
        # As in Xray, ``loglevel`` governs the error log only; ``access: "none"`` turns this off.
        if log.access == "none":
            return cls(None)
        if log.access:
            return cls(open(log.access, "a", buffering=1, encoding="utf-8"))
        return cls(sys.stdout)

    @property
    def enabled(self) -> bool:
        return self._out is not None

    def write(self, source: Any, status: str, target: Any, detour: str, reason: str = "", email: str = "") -> None:
        out = self._out
        if out is None:
            return
        now = time.time()
        stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1e6):06d}"
        line = f"{stamp} from {source} {status} {target}"
        if detour:
            line += f" [{detour}]"
        if reason:
            line += f" {reason}"
        if email:
            line += f" email: {email}"
        try:
            out.write(line + "\n")
            out.flush()
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        if self._out is not None and self._out not in (sys.stdout, sys.stderr):
            self._out.close()
        self._out = None
