"""Whiteouts and opaque directories in every on-disk format overlayfs implementations write.

Formats read (kernel overlayfs, fuse-overlayfs, containers/storage, OCI layers):

- a character device 0:0 named like the hidden entry (kernel and fuse-overlayfs);
- an empty file ``.wh.NAME`` beside it (OCI layer format, fuse-overlayfs without mknod);
- an opaque directory marked by the ``user.overlay.opaque`` (kernel with ``userxattr``),
  ``trusted.overlay.opaque`` or ``user.fuseoverlayfs.opaque`` (fuse-overlayfs) xattr set to
  ``y``, or containing ``.wh..wh..opq``.

Formats written: a 0:0 character device when mknod is allowed (the kernel reads only that),
else ``.wh.NAME``; opacity as ``user.overlay.opaque=y``, else ``.wh..wh..opq``.
"""

from __future__ import annotations

import errno
import logging
import os
import stat

logger = logging.getLogger(__name__)

WH_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTRS = ("user.overlay.opaque", "trusted.overlay.opaque", "user.fuseoverlayfs.opaque")
# never shown through the union nor copied up: overlayfs' own, and fuse-overlayfs' bookkeeping
PRIVATE_XATTR_PREFIXES = (
    "user.overlay.",
    "trusted.overlay.",
    "user.fuseoverlayfs.opaque",
    "user.fuseoverlayfs.origin",
)

__all__ = [
    "OPAQUE_MARKER",
    "OPAQUE_XATTRS",
    "PRIVATE_XATTR_PREFIXES",
    "WH_PREFIX",
    "clear_whiteouts",
    "create_whiteout",
    "is_opaque_dir",
    "is_whiteout_stat",
    "remove_whiteout",
    "set_opaque",
    "wh_name",
]


def wh_name(name: str) -> str:
    """Return the ``.wh.`` file name that hides *name*."""
    return WH_PREFIX + name


def is_whiteout_stat(st: os.stat_result) -> bool:
    """True if *st* describes a character device 0:0 (the kernel's whiteout)."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque_dir(path: str) -> bool:
    """True if the directory at real *path* hides the same directory in lower layers."""
    for name in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return os.path.lexists(os.path.join(path, OPAQUE_MARKER))


def set_opaque(path: str) -> None:
    """Mark the real directory *path* opaque: xattr first (readable by the kernel), else marker."""
    try:
        os.setxattr(path, OPAQUE_XATTRS[0], b"y", follow_symlinks=False)
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EPERM, errno.EACCES):
            raise
        logger.debug("user xattrs refused on %s (%s); writing %s", path, exc, OPAQUE_MARKER)
    fd = os.open(os.path.join(path, OPAQUE_MARKER), os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0)
    os.close(fd)


def create_whiteout(dirpath: str, name: str) -> None:
    """Hide *name* of lower layers by a whiteout in the real upper directory *dirpath*.

    A 0:0 character device is preferred; ``.wh.NAME`` is used when mknod is refused.
    """
    target = os.path.join(dirpath, name)
    try:
        os.mknod(target, stat.S_IFCHR | 0o000, 0)
        return
    except FileExistsError:
        st = os.lstat(target)
        if is_whiteout_stat(st):
            return
        raise
    except PermissionError:
        logger.debug("mknod 0:0 refused in %s; writing %s", dirpath, wh_name(name))
    fd = os.open(os.path.join(dirpath, wh_name(name)), os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0)
    os.close(fd)


def remove_whiteout(dirpath: str, name: str) -> bool:
    """Remove any whiteout for *name* in real directory *dirpath*; True if one was there."""
    removed = False
    target = os.path.join(dirpath, name)
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        pass
    else:
        if is_whiteout_stat(st):
            os.unlink(target)
            removed = True
    try:
        os.unlink(os.path.join(dirpath, wh_name(name)))
        removed = True
    except FileNotFoundError:
        pass
    return removed


def clear_whiteouts(real_dir: str) -> None:
    """Empty an upper directory whose merged view is empty (only whiteouts and markers left)."""
    with os.scandir(real_dir) as entries:
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            if entry.name.startswith(WH_PREFIX) or is_whiteout_stat(st):
                os.unlink(entry.path)
            else:
                raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY), real_dir)
