"""The ``fuse`` storage driver's mount: ``fuse_overlay`` serving a union as our child.

Called inside the user and mount namespaces that will use the mount (the container's C process,
or the build's step helper). The server runs in the foreground with PDEATHSIG, so it ends with
the process that started it even when that one is SIGKILLed: no stale mount, no stray server.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Sequence

from sandbox import _syscalls as sc

__all__ = ["mount_fuse", "unmount_fuse"]


def mount_fuse(lowers: Sequence[str], mountpoint: str, upper: str, work: str) -> int:
    """Mount the union at ``mountpoint``; returns the server's pid once the mount is live.
    Raises OSError(EIO) when the server could not mount (its own message is on stderr)."""
    from fuse_overlay import command

    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            sc.set_pdeathsig(signal.SIGTERM)
            os.set_inheritable(ready_w, True)
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)
            argv = command(lowers, mountpoint, upperdir=upper, workdir=work, ready_fd=ready_w,
                           die_with_parent=True)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    os.close(ready_w)
    answer = b""
    while chunk := os.read(ready_r, 4096):
        answer += chunk
        if answer.startswith(b"ok"):
            break
    os.close(ready_r)
    if not answer.startswith(b"ok"):
        os.waitpid(pid, 0)
        raise OSError(errno.EIO, "fuse_overlay could not mount the root filesystem",
                      mountpoint)
    return pid


def unmount_fuse(mountpoint: str, pid: int, *, timeout: float = 5) -> None:
    """Unmount and wait for the server to end (SIGKILL after ``timeout``)."""
    with contextlib.suppress(OSError):
        sc.umount2(mountpoint, sc.MNT_DETACH)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.01)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
