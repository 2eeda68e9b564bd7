"""The lwip stack's ``stackSettings``, declared once: schema, defaults and typed attributes."""

from __future__ import annotations

from dataclasses import dataclass

from tunray.config.schema import Bool, Int, setting


@dataclass(frozen=True, slots=True)
class LwipStackSettings:
    """``stackSettings`` of ``"stack": "lwip"`` (the defaults live here and nowhere else)."""

    gso: bool = setting(True, Bool(), "merge lwIP's segments of one flow into GSO super-packets "
                                      "when the TUN has vnet headers")
    mss_rewrite: bool = setting(True, Bool(), "raise the MSS lwIP advertises in its SYN-ACK to the TUN MTU "
                                              "(lwIP's own TCP_MSS is 1460)", key="mssRewrite")
    send_high_water: int = setting(256 << 10, Int(min=16 << 10, max=1 << 30),
                                   "bytes queued towards the app per TCP flow before link.write waits",
                                   key="sendHighWater")
    time_wait: int = setting(2, Int(min=0, max=120), "TIME_WAIT seconds (lwIP's own is 120)", key="timeWait")
