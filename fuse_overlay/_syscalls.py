"""The few syscalls Python's ``os`` lacks, through ctypes with ``use_errno``."""

from __future__ import annotations

import ctypes
import os

__all__ = ["RENAME_EXCHANGE", "fallocate", "renameat2", "set_parent_death_signal"]

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """``fallocate(2)`` with *mode* flags (``FALLOC_FL_PUNCH_HOLE`` and friends)."""
    if _fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), f"fallocate(fd={fd})")


_AT_FDCWD = -100
RENAME_EXCHANGE = 2
_renameat2 = _libc.renameat2
_renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_renameat2.restype = ctypes.c_int


def renameat2(old: str, new: str, flags: int) -> None:
    """``renameat2(2)`` of two paths, with flags (``RENAME_EXCHANGE``) ``os.rename`` lacks."""
    if _renameat2(_AT_FDCWD, os.fsencode(old), _AT_FDCWD, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), old, None, new)


_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(signum: int) -> None:
    """``prctl(PR_SET_PDEATHSIG, signum)``: get *signum* when the parent thread exits."""
    if _libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signum), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), "prctl(PR_SET_PDEATHSIG)")
