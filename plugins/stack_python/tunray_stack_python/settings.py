"""The python stack's ``stackSettings``, declared once: schema, defaults and typed attributes."""

from __future__ import annotations

from dataclasses import dataclass

from tunray.config.schema import Bool, Int, setting


@dataclass(frozen=True, slots=True)
class PythonStackSettings:
    """``stackSettings`` of ``"stack": "python"`` (the defaults live here and nowhere else)."""

    gso: bool = setting(True, Bool(), "send TCP super-segments (up to 64 KiB) when the TUN has vnet headers")
    send_high_water: int = setting(1 << 20, Int(min=16 << 10, max=1 << 30),
                                   "bytes queued towards the app per TCP flow before link.write waits",
                                   key="sendHighWater")
    initial_cwnd: int = setting(256 << 10, Int(min=4 << 10, max=1 << 30),
                                "initial congestion window in bytes (the app is local)", key="initialCwnd")
    time_wait: int = setting(2, Int(min=0, max=240), "TIME_WAIT seconds", key="timeWait")
    fin_timeout: int = setting(30, Int(min=1, max=600), "FIN_WAIT_2 seconds", key="finTimeout")


DEFAULTS = PythonStackSettings()
