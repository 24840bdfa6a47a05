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


def mount_fuse(lowers: Sequence[str], mountpoint: str, upper: str, work: str, *,
               stderr_fd: int | None = None, timeout: float | None = None) -> int:
    """Mount the union at ``mountpoint``; returns the server's pid once the mount is live.

    The server writes to ``stderr_fd``, by default to ``<work>.fuse-overlay.log`` beside the
    workdir (removed with it): what it says once serving (libfuse's complaints as it ends, say)
    is not the container's output. Raises OSError(EIO) when the server could not mount, having
    copied what it said to our stderr (unless ``stderr_fd`` was given), OSError(ETIMEDOUT) when
    it is not live within ``timeout`` seconds (the server is then killed)."""
    from fuse_overlay import command

    log_path = f"{work.rstrip('/')}.fuse-overlay.log"
    log = stderr_fd if stderr_fd is not None else os.open(
        log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)
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
            os.dup2(log, 2)
            argv = command(lowers, mountpoint, upperdir=upper, workdir=work, ready_fd=ready_w,
                           die_with_parent=True,
                           options=["squash_to_root"] if _maps_one_uid() else [])
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    os.close(ready_w)
    if stderr_fd is None:
        os.close(log)
    try:
        answer = _read_ready(ready_r, timeout)
    finally:
        os.close(ready_r)
    if answer is not None and answer.startswith(b"ok"):
        return pid
    if answer is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if stderr_fd is None:
        _copy_to_stderr(log_path)
    if answer is None:
        raise OSError(errno.ETIMEDOUT, f"fuse_overlay was not serving after {timeout:g} s",
                      mountpoint)
    raise OSError(errno.EIO, "fuse_overlay could not mount the root filesystem (exit status "
                  f"{os.waitstatus_to_exitcode(status)})", mountpoint)


def _copy_to_stderr(path: str) -> None:
    with contextlib.suppress(OSError), open(path, "rb") as f:
        os.write(2, f.read()[-4096:])


def _maps_one_uid() -> bool:
    """True in a user namespace that maps a single uid (no subordinate range). Owners an image
    recorded (chown refused, so ``override_stat`` xattrs) have no uid to be shown as there, and
    would show as nobody, where kernel overlay and copy show root: squash to root, as they."""
    try:
        with open("/proc/self/uid_map") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    return len(lines) == 1 and lines[0].split()[2:] == ["1"]


def _read_ready(fd: int, timeout: float | None) -> bytes | None:
    """What the server wrote on its ready pipe up to ``ok`` or its end; None on timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    answer = b""
    while True:
        if deadline is not None:
            import select

            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
        chunk = os.read(fd, 4096)
        answer += chunk
        if not chunk or answer.startswith(b"ok"):
            return answer


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
