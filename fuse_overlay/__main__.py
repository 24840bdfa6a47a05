"""``python -m fuse_overlay -o lowerdir=A:B,upperdir=U,workdir=W MOUNTPOINT``.

The same syntax as fuse-overlayfs, so it can stand in for it (Podman's ``mount_program``).

Without ``-f`` the command forks, and returns (exit 0) only once the mount is live; the server
process keeps running until the file system is unmounted.  With ``-f`` it serves in the
foreground; ``--ready-fd N`` then writes ``ok\\n`` to fd N once the mount is live, and
``--die-with-parent`` unmounts and exits when the parent process dies (even by SIGKILL).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable

from fuse_overlay._syscalls import set_parent_death_signal
from fuse_overlay.options import MountConfig, UsageError, parse_args

logger = logging.getLogger("fuse_overlay")

USAGE = """\
usage: fuse-overlay [-f] [-d] [-s] [--ready-fd N] [--die-with-parent]
                    -o lowerdir=L1[:L2...][,upperdir=U,workdir=W][,OPT...] MOUNTPOINT

overlay options: lowerdir upperdir workdir squash_to_root squash_to_uid=N squash_to_gid=N
  uidmapping=C:H:L[:C:H:L...] gidmapping=... noacl volatile fsync=0|1 timeout=S threaded=0|1
  writeback=0|1 kernel_cache=0|1 max_write=N
libfuse options: allow_other allow_root default_permissions ro fsname=NAME entry_timeout=S
  attr_timeout=S negative_timeout=S ...
"""


def in_user_namespace() -> bool:
    """True when this process runs in a user namespace other than the initial one."""
    try:
        with open("/proc/self/uid_map", encoding="ascii") as fh:
            fields = fh.read().split()
    except OSError:
        return False
    return fields != ["0", "0", "4294967295"]


# fuse_main's exit codes (libfuse helper.c)
_FUSE_MAIN_ERRORS = {
    1: "invalid libfuse option",
    2: "no mount point",
    3: "cannot set up the FUSE session",
    4: "the mount itself failed (see fusermount's message, if any)",
    5: "cannot daemonize",
    6: "cannot set up signal handlers",
    7: "error in the FUSE event loop",
}


def check_allow_other(config: MountConfig, fuse_conf: str = "/etc/fuse.conf") -> None:
    """Refuse ``allow_other`` up front where fusermount would: an unprivileged mount outside a
    user namespace, without ``user_allow_other`` in /etc/fuse.conf."""
    if "allow_other" not in config.fuse_options or os.getuid() == 0 or in_user_namespace():
        return
    try:
        with open(fuse_conf, encoding="utf-8") as fh:
            lines = [ln.split("#", 1)[0].strip() for ln in fh]
    except OSError:
        lines = []
    if "user_allow_other" not in lines:
        raise UsageError(
            f"option allow_other needs user_allow_other in {fuse_conf} (or a user namespace)"
        )


def fuse_kwargs(config: MountConfig, libfuse_major: int = 3) -> dict[str, str | bool]:
    """Keyword options for ``FUSE(...)``: ours, then the libfuse ones given on the command line."""
    kwargs: dict[str, str | bool] = {"fsname": "fuse-overlay", "subtype": "fuse-overlay"}
    if in_user_namespace():
        kwargs.update(allow_other=True, default_permissions=True)
    if libfuse_major == 2:
        from fuse_overlay._fuse import libfuse2_options

        t = config.tuning
        kwargs.update(libfuse2_options(t.entry_timeout, t.attr_timeout, t.negative_timeout,
                                       t.kernel_cache, t.max_write))
    kwargs.update(config.fuse_options)
    kwargs.update(
        foreground=True,  # libfuse must not daemonize: we do, to report readiness
        nothreads=not config.tuning.threads,
        debug=config.debug,
        use_ino=True,
    )
    return kwargs


def serve(config: MountConfig, on_ready: Callable[[], None] | None = None) -> None:
    """Mount and serve until unmounted (blocks).

    ``ro`` with an upperdir shows the upper layer too, read-only, as the kernel's overlayfs does.
    """
    from fuse_overlay._fuse import LIBFUSE_MAJOR, OverlayFUSE
    from fuse_overlay.layers import LayerStack
    from fuse_overlay.operations import OverlayOperations

    stack = LayerStack(list(config.lowerdirs), config.upperdir)
    ops = OverlayOperations(
        stack,
        config.workdir,
        ownership=config.ownership,
        tuning=config.tuning,
        volatile=config.volatile,
        read_only=config.read_only,
        on_ready=on_ready,
    )
    os.umask(0)  # the kernel has applied the caller's umask already
    try:
        OverlayFUSE(ops, config.mountpoint, posix_acl=not config.noacl,
                    **fuse_kwargs(config, LIBFUSE_MAJOR))
    except RuntimeError as exc:  # the bindings raise RuntimeError(fuse_main's exit code)
        code = exc.args[0] if exc.args else None
        if not isinstance(code, int):
            raise
        reason = _FUSE_MAIN_ERRORS.get(code, f"libfuse error {code}")
        raise RuntimeError(f"cannot mount {config.mountpoint}: {reason}") from None


def _notify(fd: int, message: bytes) -> None:
    try:
        os.write(fd, message)
        os.close(fd)
    except OSError:
        pass


def _daemonize(config: MountConfig) -> int:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        chunks = []
        while chunk := os.read(read_end, 4096):
            chunks.append(chunk)
        os.close(read_end)
        answer = b"".join(chunks)
        if answer.startswith(b"ok"):
            return 0
        if not answer:
            _pid, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            answer = f"mount failed (server exit status {code})".encode()
        sys.stderr.write(f"fuse-overlay: {answer.decode(errors='replace').strip()}\n")
        return 1
    os.close(read_end)
    os.setsid()
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)

    def ready() -> None:
        os.dup2(devnull, 2)  # detach from the caller's terminal only once the mount is live
        _notify(write_end, b"ok\n")

    code = 0
    try:
        serve(config, ready)
    except Exception as exc:  # the parent renders it as one line
        _notify(write_end, f"{exc}".encode())
        code = 1
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        sys.stdout.write(USAGE)
        return 0
    if "--version" in args or "-V" in args:
        sys.stdout.write("fuse-overlay 0.1.0 (fuse-overlayfs compatible)\n")
        return 0
    try:
        config = parse_args(args)
        check_allow_other(config)
    except UsageError as exc:
        sys.stderr.write(f"fuse-overlay: {exc}\n")
        return 1
    logging.basicConfig(
        level=logging.DEBUG if config.debug else logging.WARNING,
        format="fuse-overlay: %(levelname)s %(name)s: %(message)s",
    )
    if not config.foreground:
        return _daemonize(config)
    ready_fd = config.ready_fd
    parent = os.getppid()
    if config.die_with_parent:
        set_parent_death_signal(signal.SIGTERM)  # libfuse unmounts and exits on SIGTERM
        if os.getppid() != parent:
            return 1
    try:
        serve(config, None if ready_fd is None else lambda: _notify(ready_fd, b"ok\n"))
    except Exception as exc:
        if config.die_with_parent and os.getppid() != parent:
            return 0  # told to end with our parent, which has gone: how libfuse stops is moot
        sys.stderr.write(f"fuse-overlay: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
