"""Make OS entropy fail for real: a seccomp filter on the calling thread that
answers getrandom(2) with EIO. Used in throwaway child processes only (a
filter cannot be removed). The getrandom crate treats EIO as a hard error
(only ENOSYS/EPERM send it to its /dev/urandom fallback), so the core's
entropy reads fail exactly as on a machine without usable entropy.

Linux x86_64 and aarch64; `supported()` says whether this machine is one.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct
import sys

# (AUDIT_ARCH_*, __NR_getrandom) per machine.
_ARCH = {
    "x86_64": (0xC000003E, 318),
    "aarch64": (0xC00000B7, 278),
}

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
# struct seccomp_data: nr at 0, arch at 4.
_OFF_NR, _OFF_ARCH = 0, 4


def supported() -> bool:
    return sys.platform == "linux" and platform.machine() in _ARCH


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def deny_getrandom() -> None:
    """Install the filter on the calling thread; OSError if the kernel
    refuses (no seccomp filter support)."""
    arch, nr = _ARCH[platform.machine()]
    prog = b"".join(
        [
            _insn(_LD_W_ABS, _OFF_ARCH),
            _insn(_JEQ_K, arch, jt=1),
            _insn(_RET_K, _RET_ALLOW),
            _insn(_LD_W_ABS, _OFF_NR),
            _insn(_JEQ_K, nr, jf=1),
            _insn(_RET_K, _RET_ERRNO | errno.EIO),
            _insn(_RET_K, _RET_ALLOW),
        ]
    )
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = _SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    # Full-width arguments: the kernel rejects stray bits in unused ones.
    prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    prctl.restype = ctypes.c_int
    if prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")
