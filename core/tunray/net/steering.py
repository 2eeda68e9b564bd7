"""Multi-queue TUN steering by source endpoint: one eBPF program, and its mirror in Python.

With ``IFF_MULTI_QUEUE`` the kernel picks a queue for every packet it sends into the TUN
(what the app sends).  Its default hash covers the whole flow, so one app UDP socket
talking to two peers may land on two queues, that is two workers, two UDP flows and two
outbound sockets: the endpoint-independent ("full-cone") mapping would break.  A steering
program (``TUNSETSTEERINGEBPF``, Linux 4.19) picks the queue from the packet's *source*
address and port only, so everything one app socket sends reaches one worker.  Replies
need no steering: whichever queue fd a worker writes to, the packet enters the same
interface.

The system stack relies on the same function: the kernel's own replies come from the
listener ``tun_addr:port``, so a worker picks a listen port that :func:`queue_for` maps to
its own queue, and its NAT replies come back to it.

The program (``BPF_PROG_TYPE_SOCKET_FILTER``; packet loads with ``LD_ABS``/``LD_IND``, the
data starting at the IP header)::

    h = src (IPv4) | src[0:4] ^ src[4:8] ^ src[8:12] ^ src[12:16] (IPv6)
    h ^= h >> 16
    port = u16 at the L4 start (IPv4: IHL*4, IPv6: 40; extension headers are not followed)
    return u32((port + h) * 0x9E3779B1) >> 16          # the kernel takes it modulo the queue count

A load past the packet's end ends the program with 0 (queue 0).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct

TUNSETSTEERINGEBPF = 0x800454E0  # _IOR('T', 224, int)
_NR_BPF = 321  # x86_64
_BPF_PROG_LOAD = 5
_SOCKET_FILTER = 1
_GOLDEN = 0x9E3779B1


def queue_for(src: bytes, port: int, queues: int) -> int:
    """The queue the steering program picks for a packet from ``src:port`` (packed address)."""
    h = 0
    for i in range(0, len(src), 4):
        h ^= int.from_bytes(src[i:i + 4], "big")
    h ^= h >> 16
    r = ((((port + h) & 0xFFFFFFFF) * _GOLDEN) & 0xFFFFFFFF) >> 16
    return r % queues


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, dst | (src << 4), off, imm)


_LDW, _LDH, _LDB, _LDH_IND = 0x20, 0x28, 0x30, 0x48
_MOV64_X, _MOV32_X, _AND32_K, _LSH32_K, _RSH32_K = 0xBF, 0xBC, 0x54, 0x64, 0x74
_XOR32_X, _ADD32_X, _MUL32_K, _JEQ_K, _JA, _EXIT = 0xAC, 0x0C, 0x24, 0x15, 0x05, 0x95


def program() -> bytes:
    v4 = [
        _insn(_LDW, imm=12), _insn(_MOV32_X, 7, 0),
        _insn(_LDB, imm=0), _insn(_AND32_K, 0, imm=15), _insn(_LSH32_K, 0, imm=2), _insn(_MOV32_X, 8, 0),
        _insn(_LDH_IND, 0, 8, imm=0),
    ]
    v6 = [
        _insn(_LDW, imm=8), _insn(_MOV32_X, 7, 0),
        _insn(_LDW, imm=12), _insn(_XOR32_X, 7, 0),
        _insn(_LDW, imm=16), _insn(_XOR32_X, 7, 0),
        _insn(_LDW, imm=20), _insn(_XOR32_X, 7, 0),
        _insn(_LDH, imm=40),
    ]
    common = [
        _insn(_MOV32_X, 1, 7), _insn(_RSH32_K, 1, imm=16), _insn(_XOR32_X, 7, 1),
        _insn(_ADD32_X, 0, 7), _insn(_MUL32_K, 0, imm=_GOLDEN - (1 << 32)), _insn(_RSH32_K, 0, imm=16),
        _insn(_EXIT),
    ]
    head = [_insn(_MOV64_X, 6, 1), _insn(_LDB, imm=0), _insn(_RSH32_K, 0, imm=4),
            _insn(_JEQ_K, 0, off=len(v4) + 1, imm=6)]
    return b"".join(head + v4 + [_insn(_JA, off=len(v6))] + v6 + common)


def load() -> int:
    """Load the program; return its fd.  Raises :class:`OSError` (no CAP_BPF, no BPF)."""
    code = program()
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(4096)
    attr = struct.pack("=IIQQIIQII16sII", _SOCKET_FILTER, len(code) // 8, ctypes.addressof(insns),
                       ctypes.addressof(license_), 1, len(log), ctypes.addressof(log), 0, 0, b"tunray_steer", 0, 0)
    buf = ctypes.create_string_buffer(attr, 128)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(_NR_BPF, _BPF_PROG_LOAD, buf, ctypes.c_uint(128))
    if fd < 0:
        err = ctypes.get_errno()
        detail = log.value.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise OSError(err, f"loading the TUN steering program: {os.strerror(err)} {detail[0]}".strip())
    return int(fd)


def attach(queue_fd: int, prog_fd: int) -> None:
    """Steer the TUN behind *queue_fd* (any of its queues) with the program *prog_fd*."""
    fcntl.ioctl(queue_fd, TUNSETSTEERINGEBPF, struct.pack("i", prog_fd))
