"""fuse_overlay: a FUSE union filesystem in Python, a drop-in for fuse-overlayfs.

Start it as a process (``python -m fuse_overlay -o lowerdir=..,upperdir=..,workdir=.. MNT``);
:func:`command` builds that command line.  Importing this package loads no FUSE library.

Binding (the import shim ``_fuse.py``): mfusepy on libfuse 3, preferred and measured (Debian
and Ubuntu package ``libfuse3-3``, plus ``fuse3`` for ``fusermount3`` outside a user namespace);
fusepy on libfuse 2 as the fallback (package ``libfuse2``; its ``fusermount`` is the one ``fuse3``
ships).  ``FUSE_OVERLAY_BINDING=mfusepy|fusepy`` forces one.  Under libfuse 2 there are no
POSIX ACLs, rename flags, READDIRPLUS or writeback cache, and the other names of a hard link
keep showing the ``st_nlink`` the kernel cached (libfuse 2 cannot invalidate a path).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["__version__", "command"]
__version__ = "0.1.0"


def _escape(path: str) -> str:
    return path.replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def command(
    lowerdirs: Sequence[str],
    mountpoint: str,
    *,
    upperdir: str | None = None,
    workdir: str | None = None,
    options: Sequence[str] = (),
    foreground: bool = True,
    ready_fd: int | None = None,
    die_with_parent: bool = False,
    python: str = sys.executable,
) -> list[str]:
    """The argv that mounts the union at *mountpoint* (lowerdirs top first, like overlayfs).

    With ``foreground`` (the default) the process serves until the file system is unmounted;
    pass ``ready_fd`` (an inheritable pipe's write end) to learn when the mount is live: the
    process writes ``ok\\n`` there and closes it.  Without ``foreground`` the command returns
    (exit 0) once the mount is live and leaves a server process behind.  ``die_with_parent``
    makes the server unmount and exit when the process that started it dies (PR_SET_PDEATHSIG).
    """
    opts = ["lowerdir=" + ":".join(_escape(p) for p in lowerdirs)]
    if upperdir is not None:
        if workdir is None:
            raise ValueError("an upperdir needs a workdir on the same file system")
        opts += [f"upperdir={_escape(upperdir)}", f"workdir={_escape(workdir)}"]
    opts += list(options)
    argv = [python, "-m", "fuse_overlay"]
    if foreground:
        argv.append("-f")
    if ready_fd is not None:
        argv += ["--ready-fd", str(ready_fd)]
    if die_with_parent:
        argv.append("--die-with-parent")
    return [*argv, "-o", ",".join(opts), mountpoint]
