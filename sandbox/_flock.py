"""``FileLock``: an ``flock`` held for a ``with`` block.

A class rather than a ``contextlib.contextmanager``: ``contextlib`` (with ``functools``) is an
import of every ``sandbox run`` otherwise, for the two locks that path takes.
"""

from __future__ import annotations

import fcntl
import os

__all__ = ["FileLock"]


class FileLock:
    """``with FileLock(path):`` creates ``path`` if needed (mode 0600), blocks until the lock
    is ours, and lets it go explicitly on exit: a forked copy of the descriptor must not keep
    it."""

    __slots__ = ("path", "shared", "_fd")

    def __init__(self, path: str, *, shared: bool = False) -> None:
        self.path = path
        self.shared = shared
        self._fd = -1

    def __enter__(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def __exit__(self, *_exc: object) -> None:
        fd, self._fd = self._fd, -1
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
