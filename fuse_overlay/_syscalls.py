"""The few syscalls Python's ``os`` lacks, through ctypes with ``use_errno``."""

from __future__ import annotations

import ctypes
import os

__all__ = ["fallocate", "set_parent_death_signal"]

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """``fallocate(2)`` with *mode* flags (``FALLOC_FL_PUNCH_HOLE`` and friends)."""
    if _fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), f"fallocate(fd={fd})")


_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(signum: int) -> None:
    """``prctl(PR_SET_PDEATHSIG, signum)``: get *signum* when the parent thread exits."""
    if _libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signum), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), "prctl(PR_SET_PDEATHSIG)")
