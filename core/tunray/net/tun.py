"""Opening Linux TUN devices (``/dev/net/tun``) and negotiating offloads.

Only the kernel interface lives here; link configuration (addresses, routes) is the
TUN inbound's business.  Layouts from ``<linux/if_tun.h>``:

* ``struct ifreq`` for ``TUNSETIFF``/``TUNGETIFF``: 16-byte name, then ``short flags``.
* ``IFF_TUN = 0x0001``, ``IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100``, ``IFF_VNET_HDR = 0x4000``.
* ``TUNSETOFFLOAD`` takes an ``unsigned int`` of ``TUN_F_CSUM = 1``, ``TUN_F_TSO4 = 2``,
  ``TUN_F_TSO6 = 4``, ``TUN_F_TSO_ECN = 8``, ``TUN_F_UFO = 16``.
* ``TUNSETVNETHDRSZ`` sets the virtio header size (10 bytes is the default).
"""

from __future__ import annotations

import fcntl
import os
import struct

from tunray.device import FdDevice, Offloads

TUNSETIFF = 0x400454CA
TUNGETIFF = 0x800454D2
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08


class TunError(OSError):
    pass


def _ifreq(name: str, flags: int) -> bytes:
    return struct.pack("16sH22x", name.encode(), flags)


def open_tun(name: str = "", *, offload: bool = False, mtu: int = 1500,
             multi_queue: bool = False) -> tuple[FdDevice, str]:
    """Create (or attach to) TUN *name*; return the device and the kernel's name for it.

    With *offload*, ask for ``IFF_VNET_HDR`` and checksum + TSO offloads; if the kernel
    refuses the offloads the device still works, without them.  With *multi_queue*
    (``IFF_MULTI_QUEUE``) every call with the same name adds one queue: one fd each.
    """
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0) | (IFF_MULTI_QUEUE if multi_queue else 0)
        result = fcntl.ioctl(fd, TUNSETIFF, _ifreq(name, flags))
        ifname = result[:16].rstrip(b"\0").decode()
        offloads = Offloads()
        if offload:
            try:
                fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
                offloads = Offloads(vnet_hdr=True, csum=True, tso=True)
            except OSError:
                fcntl.ioctl(fd, TUNSETOFFLOAD, 0)
                offloads = Offloads(vnet_hdr=True)
    except OSError as exc:
        os.close(fd)
        raise TunError(exc.errno, f"cannot open TUN {name or '(any)'}: {exc.strerror}") from None
    device = FdDevice(fd, mtu, offloads)
    device.name = ifname
    return device, ifname


def attach_persistent(name: str) -> int:
    """An inheritable fd of the existing persistent TUN *name* (for ``tunray tun-fd``).

    Needs no capability when the TUN belongs to the caller (``ip tuntap add ... user U``).
    """
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, TUNSETIFF, _ifreq(name, IFF_TUN | IFF_NO_PI))
    except OSError as exc:
        os.close(fd)
        raise TunError(exc.errno, f"cannot attach to TUN {name}: {exc.strerror}") from None
    os.set_inheritable(fd, True)
    return fd


def adopt_tun(fd: int, *, expect_name: str = "", mtu: int = 1500) -> tuple[FdDevice, str]:
    """Use an existing TUN fd (``XRAY_TUN_FD``): it must be a TUN with ``IFF_NO_PI``.

    Raises :class:`TunError` with a one-line reason if it is not.
    """
    if fd < 3:
        raise TunError(0, f"TUN fd {fd} is not valid (must be >= 3)")
    try:
        result = fcntl.ioctl(fd, TUNGETIFF, _ifreq("", 0))
    except OSError as exc:
        raise TunError(exc.errno, f"fd {fd} is not a TUN device: {exc.strerror}") from None
    ifname = result[:16].rstrip(b"\0").decode()
    (flags,) = struct.unpack_from("H", result, 16)
    if not flags & IFF_TUN or not flags & IFF_NO_PI:
        raise TunError(0, f"fd {fd} ({ifname}) must be opened with IFF_TUN|IFF_NO_PI")
    if expect_name and ifname != expect_name:
        raise TunError(0, f"fd {fd} is TUN {ifname!r}, but the config names {expect_name!r}")
    offloads = Offloads(vnet_hdr=bool(flags & IFF_VNET_HDR))
    device = FdDevice(fd, mtu, offloads, owns_fd=False)
    device.name = ifname
    return device, ifname
