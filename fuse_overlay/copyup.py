"""Copy-up: bring a lower object into the upper layer through the workdir and an atomic rename.

Parents are copied first (directories only, metadata kept, never opaque).  A regular file keeps
its data with sparse holes, mode, owner where the kernel lets us, nanosecond times and xattrs.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
from collections.abc import Callable

from fuse_overlay.layers import LayerStack, Node, split
from fuse_overlay.ownership import OVERRIDE_XATTRS, format_override
from fuse_overlay.whiteout import PRIVATE_XATTR_PREFIXES

logger = logging.getLogger(__name__)

__all__ = ["CopyUp"]

_CHUNK = 1 << 20


class CopyUp:
    """Copies objects of a :class:`LayerStack` into its upper layer, via ``workdir/work``."""

    def __init__(self, stack: LayerStack, workdir: str) -> None:
        if stack.upper is None:
            raise ValueError("copy-up needs an upper layer")
        self.stack = stack
        self.work = os.path.join(workdir, "work")
        os.makedirs(self.work, exist_ok=True)
        if not os.access(self.work, os.W_OK | os.X_OK):
            os.chmod(self.work, 0o700)  # the kernel leaves its work/work at mode 000
        self._clean_stale()
        self._counter = itertools.count()
        self.on_copied: list[Callable[[Node, str], None]] = []

    def _clean_stale(self) -> None:
        """Remove temporaries a killed server left behind (never the kernel's own entries)."""
        with os.scandir(self.work) as entries:
            for entry in entries:
                if entry.name.startswith("#fo"):
                    logger.info("removing stale copy-up temporary %s", entry.path)
                    _remove_quietly(entry.path)

    def temp_path(self) -> str:
        return os.path.join(self.work, f"#fo{os.getpid():x}.{next(self._counter):x}")

    # -- public ------------------------------------------------------------------------------

    def ensure_dir(self, path: str) -> str:
        """Real upper path of merged directory *path*, copying it and its parents up if needed."""
        upper = self.stack.real(0, path)
        if path == "/" or self.stack.upper_has_dir(path):
            return upper
        parent, _ = split(path)
        self.ensure_dir(parent)
        node = self.stack.resolve(path)
        if not node.is_dir:
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        self._copy_object(node, upper, data=False)
        self.stack.forget(path)  # the upper copy now contributes to it and to everything below
        return upper

    def copy_up(self, node: Node, *, data: bool = True) -> str:
        """Real upper path of *node*, copying it up if it lives in a lower layer.

        With ``data=False`` a regular file is copied empty (the caller truncates it anyway).
        """
        if node.layer == 0:
            return node.real
        if node.is_dir:
            return self.ensure_dir(node.path)
        parent, _ = split(node.path)
        self.ensure_dir(parent)
        upper = self.stack.real(0, node.path)
        self._copy_object(node, upper, data=data)
        return upper

    def copy_tree(self, path: str) -> str:
        """Copy merged directory *path* and everything visible below it into the upper layer."""
        upper = self.ensure_dir(path)
        for name in self.stack.list_dir(path):
            child_path = (path.rstrip("/") or "") + "/" + name
            child = self.stack.resolve(child_path)
            if child.is_dir:
                self.copy_tree(child_path)
            elif child.layer != 0:
                self.copy_up(child)
        return upper

    # -- mechanics ---------------------------------------------------------------------------

    def _copy_object(self, node: Node, upper: str, *, data: bool) -> None:
        st = node.st
        tmp = self.temp_path()
        mode = stat.S_IMODE(st.st_mode)
        try:
            if stat.S_ISREG(st.st_mode):
                self._copy_file(node.real, tmp, st, data=data)
            elif stat.S_ISDIR(st.st_mode):
                os.mkdir(tmp, 0o700)
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(node.real), tmp)
            else:
                os.mknod(tmp, st.st_mode, st.st_rdev)
            copy_xattrs(node.real, tmp)
            self._copy_owner(tmp, st)
            if not stat.S_ISLNK(st.st_mode):
                os.chmod(tmp, mode)
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
            os.rename(tmp, upper)
        except BaseException:
            _remove_quietly(tmp)
            raise
        for callback in self.on_copied:
            callback(node, upper)

    def _copy_file(self, src: str, dst: str, st: os.stat_result, *, data: bool) -> None:
        out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            if data and st.st_size:
                inp = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    copy_sparse(inp, out, st.st_size)
                finally:
                    os.close(inp)
        finally:
            os.close(out)

    @staticmethod
    def _copy_owner(tmp: str, st: os.stat_result) -> None:
        try:
            os.chown(tmp, st.st_uid, st.st_gid, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EINVAL):
                raise
            if stat.S_ISLNK(st.st_mode):
                return
            # keep the owner visible the way containers/storage does when it cannot chown
            try:
                os.setxattr(
                    tmp, OVERRIDE_XATTRS[0], format_override(st.st_uid, st.st_gid, st.st_mode)
                )
            except OSError:
                logger.debug("cannot keep owner %d:%d of %s", st.st_uid, st.st_gid, tmp)


def copy_sparse(inp: int, out: int, size: int) -> None:
    """Copy *size* bytes from fd *inp* to fd *out*, keeping holes (SEEK_DATA/SEEK_HOLE)."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(inp, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole remains
                break
            start, end = pos, size  # no SEEK_DATA support: copy everything
        else:
            end = os.lseek(inp, start, os.SEEK_HOLE)
        _copy_range(inp, out, start, min(end, size))
        pos = end
    os.ftruncate(out, size)


def _copy_range(inp: int, out: int, start: int, end: int) -> None:
    off = start
    while off < end:
        want = min(end - off, 1 << 30)
        try:
            done = os.copy_file_range(inp, out, want, off, off)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            done = _copy_rw(inp, out, off, min(end - off, _CHUNK))
        if done == 0:
            break
        off += done


def _copy_rw(inp: int, out: int, off: int, length: int) -> int:
    buf = os.pread(inp, length, off)
    if buf:
        os.pwrite(out, buf, off)
    return len(buf)


def copy_xattrs(src: str, dst: str) -> None:
    """Copy xattrs except overlay-private ones; ignore names the destination refuses."""
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            return
        raise
    for name in names:
        if name.startswith(PRIVATE_XATTR_PREFIXES):
            continue
        try:
            value = os.getxattr(src, name, follow_symlinks=False)
            os.setxattr(dst, name, value, follow_symlinks=False)
        except OSError as exc:
            logger.debug("xattr %s not copied to %s: %s", name, dst, exc)


def _remove_quietly(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)
        else:
            os.unlink(path)
    except OSError:
        pass
