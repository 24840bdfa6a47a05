"""Thin FUSE handlers over :class:`LayerStack` (STYLE 9): resolve, act on the real path, map errors.

Union rules live in ``layers.py``, ``whiteout.py`` and ``copyup.py``; a handler only strings them
together.  ``OSError`` from ``os.*`` propagates unchanged (mfusepy turns it into ``-errno``);
anything unexpected is logged and becomes ``EIO``.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import stat
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from fuse_overlay._fuse import (
    FuseOSError,
    Invalidator,
    Operations,
    fuse_get_context,
    overrides,
)
from fuse_overlay._syscalls import RENAME_EXCHANGE, renameat2
from fuse_overlay._syscalls import fallocate as _fallocate
from fuse_overlay.attrs import Attributes
from fuse_overlay.copyup import CopyUp
from fuse_overlay.layers import LayerStack, Node, split
from fuse_overlay.options import Tuning
from fuse_overlay.ownership import (
    OVERRIDE_XATTRS,
    Ownership,
    format_override,
    override_name,
)
from fuse_overlay.whiteout import (
    PRIVATE_XATTR_PREFIXES,
    WH_PREFIX,
    clear_whiteouts,
    create_whiteout,
    remove_whiteout,
    set_opaque,
)

logger = logging.getLogger(__name__)

__all__ = ["OverlayOperations"]

F = TypeVar("F", bound=Callable[..., Any])
DirEntry = tuple[str, int, int, dict[str, int] | None, int]  # see readdir_entries
RENAME_NOREPLACE = 1
_IDENTITY = Ownership()
_DEFAULT_TUNING = Tuning()
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC
_OPEN_MASK = ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY)


def handler(method: F) -> F:
    """Turn anything but ``OSError`` into a logged ``EIO`` (never EINVAL from a stray KeyError)."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except OSError:
            raise
        except Exception as exc:
            logger.exception("%s%r failed", method.__name__, args[1:])
            raise FuseOSError(errno.EIO) from exc

    return wrapper  # type: ignore[return-value]


def op(method: F) -> F:
    return overrides(Operations)(handler(method))


class OverlayOperations(Operations):  # type: ignore[misc]
    """The union as a path-based fusepy filesystem."""

    use_ns = True

    def __init__(
        self,
        stack: LayerStack,
        workdir: str | None,
        *,
        ownership: Ownership = _IDENTITY,
        tuning: Tuning = _DEFAULT_TUNING,
        volatile: bool = False,
        read_only: bool = False,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.stack = stack
        self.copy = (
            None if read_only or stack.upper is None or workdir is None else CopyUp(stack, workdir)
        )
        self.ownership = ownership
        self.tuning = tuning
        self.volatile = volatile
        self.on_ready = on_ready
        self.writeback = False  # set in init once the kernel accepted the writeback cache
        self._mutex = stack.lock
        self._euid, self._egid = os.geteuid(), os.getegid()
        self._statfs_root = stack.layers[0].root
        self._files: dict[int, tuple[str, int]] = {}  # fd -> (merged path at open, layer)
        self._opendirs: dict[int, _DirHandle] = {}
        self._described: set[str] = set()  # directories listed with READDIRPLUS attributes
        self._next_dir = itertools.count(1)
        self._dirty_links: set[int] = set()  # fds written whose inode has other names
        self._direct: set[int] = set()  # fds opened with direct_io (hard-linked files)
        self.invalidator = Invalidator()
        self.attrs = Attributes(stack, ownership, self.invalidator)
        if self.copy is not None:
            self.copy.on_copied.append(self.attrs.alias)

    # -- helpers -------------------------------------------------------------------------------

    def _writable(self) -> CopyUp:
        if self.copy is None:
            raise FuseOSError(errno.EROFS)
        return self.copy

    def _prepare_new(self, path: str) -> tuple[str, bool]:
        """Make room for a new upper object at *path*: (real path, lower layer had the name)."""
        copy = self._writable()
        parent, name = split(path)
        if name.startswith(WH_PREFIX):
            raise FuseOSError(errno.EINVAL)
        exists, whiteout, lower = self.stack.probe_new(path)
        if exists:
            raise FuseOSError(errno.EEXIST)
        pdir = copy.ensure_dir(parent)
        if whiteout:
            remove_whiteout(pdir, name)
        return pdir + "/" + name, lower or whiteout

    def _own_new(self, real: str) -> None:
        """Give a new object the caller's owner, as the kernel would."""
        uid, gid, _pid = fuse_get_context()
        uid, gid = self.ownership.on_disk(uid, gid)
        if uid == self._euid:
            uid = -1
        if gid == self._egid:
            gid = -1
        if gid != -1 and os.stat(os.path.dirname(real)).st_mode & stat.S_ISGID:
            gid = -1
        if uid == -1 and gid == -1:
            return
        try:
            os.chown(real, uid, gid, follow_symlinks=False)
        except OSError as exc:
            logger.debug("cannot give %s to %d:%d: %s", real, uid, gid, exc)

    def _whiteout_if_lower(self, path: str, lower: bool) -> None:
        if lower:
            parent, name = split(path)
            create_whiteout(self._writable().ensure_dir(parent), name)

    # -- lifecycle -----------------------------------------------------------------------------

    @op
    def init_with_config(self, conn: Any, config: Any) -> None:
        t = self.tuning
        if config is not None:
            config.use_ino = 1
            config.hard_remove = 1
            config.nullpath_ok = 1
            config.entry_timeout = t.entry_timeout
            config.attr_timeout = t.attr_timeout
            config.negative_timeout = t.negative_timeout
            config.kernel_cache = int(t.kernel_cache)
        if conn is not None:
            if t.max_write:
                conn.max_write = t.max_write
            if t.writeback and conn.capable & (1 << 16):
                conn.want |= 1 << 16
                self.writeback = True
        self.invalidator.bind()
        if self.on_ready is not None:
            self.on_ready()

    def _open_flags(self, flags: int) -> int:
        flags = (flags & _OPEN_MASK) | os.O_CLOEXEC
        if self.writeback:
            # the kernel handles O_APPEND and may read pages of files opened write-only
            flags &= ~os.O_APPEND
            if flags & os.O_ACCMODE == os.O_WRONLY:
                flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
        return flags

    # -- reading -------------------------------------------------------------------------------

    @op
    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, int]:
        if path is None:
            if fh is None:
                raise FuseOSError(errno.EBADF)
            return self.attrs.of(fh, os.fstat(fh))
        node = self.stack.resolve(path)
        attrs = self.attrs.of(node.real, node.st)
        if node.st.st_nlink > 1:
            self.attrs.note_links(path, node.st, attrs["st_ino"])
        return attrs

    @op
    def readlink(self, path: str) -> str:
        return os.readlink(self.stack.resolve(path).real)

    @op
    def opendir(self, path: str) -> int:
        self.stack.dir_layers(path)  # ENOENT/ENOTDIR now rather than at readdir
        handle = next(self._next_dir)
        self._opendirs[handle] = _DirHandle(path)
        return handle

    def _dir(self, path: str | None, fh: int) -> _DirHandle:
        handle = self._opendirs.get(fh)
        if handle is None:  # a binding that lost our handle: list by name
            handle = self._opendirs[fh] = _DirHandle(_need(path))
        return handle

    def _listing(self, path: str) -> list[Any]:
        devs, ino_of = self.stack.devs, self.attrs.ino_of
        out: list[Any] = [".", ".."]
        for name, layer, d_ino, dtype in self.stack.list_dir_entries(path):
            out.append((name, {"st_ino": ino_of((devs[layer], d_ino)), "st_mode": dtype}, 0))
        return out

    @op
    def readdir(self, path: str | None, fh: int) -> list[Any]:
        return self._listing(self._dir(path, fh).path)

    @handler
    def readdir_entries(
        self, path: str | None, fh: int, offset: int, plus: bool
    ) -> Iterator[DirEntry]:
        """The directory from entry *offset* on, for a libfuse filler in offset mode:
        ``(name, inode, type, attributes or None, offset of the next entry)``.

        With *plus* (READDIRPLUS) each entry carries the attributes ``getattr`` would report,
        so the kernel needs no LOOKUP per entry: a stat walk then costs one request per
        directory instead of one per name.  The listing is taken at offset 0 and kept with the
        handle, so offsets stay valid while the directory changes (``rewinddir`` relists).
        """
        handle = self._dir(path, fh)
        if offset == 0 or handle.listing is None:
            handle.listing = self.stack.list_dir_entries(handle.path)
            # attributes once per directory: the kernel keeps the names it got (our timeouts
            # are long and every change goes through it), so listing again needs none; should
            # it have dropped some, it looks them up
            handle.plus = handle.path not in self._described
            self._described.add(handle.path)
        return self._entries(handle.path, handle.listing, offset, plus and handle.plus)

    def _entries(
        self, dpath: str, listing: list[tuple[str, int, int, int]], offset: int, plus: bool
    ) -> Iterator[DirEntry]:
        if offset == 0:
            yield ".", 1, stat.S_IFDIR, None, 1
        if offset <= 1:
            yield "..", 1, stat.S_IFDIR, None, 2
        devs, ino_of, attrs_of = self.stack.devs, self.attrs.ino_of, self.attrs.of
        roots = self.stack.roots
        prefix = "" if dpath == "/" else dpath
        for k in range(max(offset - 2, 0), len(listing)):
            name, layer, d_ino, dtype = listing[k]
            attrs = None
            if plus:
                child = prefix + "/" + name
                real = roots[layer] + child
                try:
                    st = os.lstat(real)
                except OSError:  # gone meanwhile: the kernel will look it up
                    pass
                else:
                    attrs = attrs_of(real, st)
                    if st.st_nlink > 1:
                        self.attrs.note_links(child, st, attrs["st_ino"])
            yield name, ino_of((devs[layer], d_ino)), dtype, attrs, k + 3

    @op
    def releasedir(self, path: str | None, fh: int) -> int:
        self._opendirs.pop(fh, None)
        return 0

    @op
    def open(self, path: str, flags: int) -> int:
        node = self.stack.resolve(path)
        real, layer = node.real, node.layer
        if flags & _WRITE_FLAGS and (layer != 0 or self.copy is None):
            copy = self._writable()  # EROFS on a read-only union: layer 0 is then a lower one
            with self._mutex:
                node = self.stack.resolve(path)
                real, layer = copy.copy_up(node, data=not flags & os.O_TRUNC), 0
        fd = os.open(real, self._open_flags(flags))
        if layer != 0:
            self._files[fd] = (path, layer)
        if layer == 0 and self.copy is not None and node.st.st_nlink > 1:
            # lower files never change in place (copy-up breaks their links): only upper ones
            self._direct.add(fd)
            if flags & _WRITE_FLAGS:
                self._dirty_links.add(fd)
        return fd

    def wants_direct_io(self, fh: int) -> bool:
        """Hard-linked files bypass the page cache: each name is its own kernel inode here, and
        with the writeback cache the kernel would not see data written through another name."""
        return fh in self._direct

    @op
    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    @op
    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self._statfs_root)
        return {
            key: getattr(sv, key)
            for key in (
                "f_bsize",
                "f_frsize",
                "f_blocks",
                "f_bfree",
                "f_bavail",
                "f_files",
                "f_ffree",
                "f_favail",
                "f_namemax",
            )
        }

    @op
    def access(self, path: str, amode: int) -> int:
        node = self.stack.resolve(path)
        if amode & os.W_OK and self.copy is None:
            raise FuseOSError(errno.EROFS)
        if amode == os.F_OK:
            return 0
        attrs = self.attrs.of(node.real, node.st)
        uid, gid, _pid = fuse_get_context()
        mode = attrs["st_mode"]
        if uid == 0:
            if amode & os.X_OK and not stat.S_ISDIR(mode) and not mode & 0o111:
                raise FuseOSError(errno.EACCES)
            return 0
        shift = 6 if uid == attrs["st_uid"] else 3 if gid == attrs["st_gid"] else 0
        if (mode >> shift) & amode != amode:
            raise FuseOSError(errno.EACCES)
        return 0

    @op
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        if name.startswith(PRIVATE_XATTR_PREFIXES):
            raise FuseOSError(errno.ENODATA)
        return os.getxattr(self.stack.resolve(path).real, name, follow_symlinks=False)

    @op
    def listxattr(self, path: str) -> list[str]:
        names = os.listxattr(self.stack.resolve(path).real, follow_symlinks=False)
        return [n for n in names if not n.startswith(PRIVATE_XATTR_PREFIXES)]

    # -- file data -----------------------------------------------------------------------------

    @op
    def create(self, path: str, mode: int, flags: int = os.O_WRONLY) -> int:
        with self._mutex:
            real, _lower = self._prepare_new(path)
            fd = os.open(real, self._open_flags(flags) | os.O_CREAT | os.O_EXCL, mode)
            self.attrs.overrides[_key(os.fstat(fd))] = None
            self._own_new(real)
        return fd

    @op
    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        return os.pwrite(fh, data, offset)

    @op
    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        if fh is not None:
            os.ftruncate(fh, length)
            return 0
        if path is None:
            raise FuseOSError(errno.EBADF)
        copy = self._writable()
        with self._mutex:
            real = copy.copy_up(self.stack.resolve(path), data=length != 0)
        os.truncate(real, length)
        return 0

    @op
    def fallocate(self, path: str | None, mode: int, offset: int, size: int, fh: int) -> int:
        if mode == 0:
            os.posix_fallocate(fh, offset, size)
        else:
            _fallocate(fh, mode, offset, size)
        return 0

    @op
    def flush(self, path: str | None, fh: int) -> int:
        if fh in self._dirty_links:  # close() waits for flush, not for release
            self._dirty_links.discard(fh)
            self.attrs.invalidate_links(self.attrs.ino(os.fstat(fh)), but=path)
        return 0

    @op
    def release(self, path: str | None, fh: int) -> int:
        self._files.pop(fh, None)
        self._dirty_links.discard(fh)
        self._direct.discard(fh)
        os.close(fh)
        return 0

    @op
    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        if not self.volatile:
            (os.fdatasync if datasync else os.fsync)(fh)
        return 0

    # -- namespace changes ---------------------------------------------------------------------

    @op
    def mknod(self, path: str, mode: int, dev: int) -> int:
        with self._mutex:
            real, _lower = self._prepare_new(path)
            os.mknod(real, mode, dev)
            self._own_new(real)
        return 0

    @op
    def mkdir(self, path: str, mode: int) -> int:
        with self._mutex:
            real, lower = self._prepare_new(path)
            os.mkdir(real, mode)
            if lower:
                set_opaque(real)
            self._own_new(real)
            self.stack.forget(path)
            self.stack.set_dir_layers(path, (0,))
        return 0

    @op
    def symlink(self, path: str, target: str) -> int:
        with self._mutex:
            real, _lower = self._prepare_new(path)
            os.symlink(target, real)
            self._own_new(real)
        return 0

    @op
    def link(self, path: str, source: str) -> int:
        copy = self._writable()
        with self._mutex:
            src = self.stack.resolve(source)
            if src.is_dir:
                raise FuseOSError(errno.EPERM)
            real_src = copy.copy_up(src)
            real, _lower = self._prepare_new(path)
            os.link(real_src, real)
            ino = self.attrs.ino(src.st)
            self.attrs.links.setdefault(ino, set()).update((source, path))
            self.attrs.invalidate_links(ino, but=path)
        return 0

    @op
    def unlink(self, path: str) -> int:
        self._writable()
        with self._mutex:
            node = self.stack.resolve(path)
            if node.is_dir:
                raise FuseOSError(errno.EISDIR)
            lower = self.stack.lower_has(path)
            if node.layer == 0:
                os.unlink(node.real)
                self.attrs.gone(node.st)
            self._whiteout_if_lower(path, lower)
            if node.st.st_nlink > 1:
                ino = self.attrs.ino(node.st)
                names = self.attrs.links.get(ino)
                if names is not None:
                    names.discard(path)
                    self.attrs.invalidate_links(ino)
        return 0

    @op
    def rmdir(self, path: str) -> int:
        self._writable()
        with self._mutex:
            node = self.stack.resolve(path)
            if not node.is_dir:
                raise FuseOSError(errno.ENOTDIR)
            if self.stack.list_dir(path):
                raise FuseOSError(errno.ENOTEMPTY)
            lower = self.stack.lower_has(path)
            if node.layer == 0:
                clear_whiteouts(node.real)
                os.rmdir(node.real)
                self.attrs.gone(node.st)
            self.stack.forget(path)
            self._described.discard(path)
            self._whiteout_if_lower(path, lower)
        return 0

    @op
    def rename(self, old: str, new: str, flags: int = 0) -> int:
        copy = self._writable()
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == (
            RENAME_NOREPLACE | RENAME_EXCHANGE
        ):
            raise FuseOSError(errno.EINVAL)
        with self._mutex:
            src = self.stack.resolve(old)
            if flags & RENAME_EXCHANGE:
                self._exchange_locked(copy, src, self.stack.resolve(new))
                return 0
            dst = self.stack.lookup(new)
            if dst is not None:
                if flags & RENAME_NOREPLACE:
                    raise FuseOSError(errno.EEXIST)
                if src.is_dir and not dst.is_dir:
                    raise FuseOSError(errno.ENOTDIR)
                if dst.is_dir and not src.is_dir:
                    raise FuseOSError(errno.EISDIR)
                if dst.is_dir and self.stack.list_dir(new):
                    raise FuseOSError(errno.ENOTEMPTY)
                if os.path.samestat(src.st, dst.st):
                    return 0
            self._rename_locked(copy, src, dst, new)
        return 0

    def _rename_locked(self, copy: CopyUp, src: Node, dst: Node | None, new: str) -> None:
        old = src.path
        old_lower = self.stack.lower_has(old)
        new_lower = self.stack.lower_has(new)
        if src.is_dir:
            if self.stack.dir_layers(old) != (0,):
                # a directory merged from lower layers: copy it up whole, then it stands alone
                # (better than the kernel's EXDEV and it never loses data)
                copy.copy_tree(old)
                set_opaque(self.stack.real(0, old))
                self.stack.forget(old)
            real_src = self.stack.real(0, old)
        else:
            real_src = copy.copy_up(src)
        parent, name = split(new)
        pdir = copy.ensure_dir(parent)
        real_dst = pdir + "/" + name
        remove_whiteout(pdir, name)
        if dst is not None and dst.is_dir and os.path.isdir(real_dst):
            clear_whiteouts(real_dst)
        os.rename(real_src, real_dst)
        if dst is not None and dst.layer == 0:
            self.attrs.gone(dst.st)
        if src.is_dir and new_lower:
            set_opaque(real_dst)
        self.stack.forget(old)
        self.stack.forget(new)
        self._whiteout_if_lower(old, old_lower)

    def _exchange_locked(self, copy: CopyUp, a: Node, b: Node) -> None:
        """``renameat2(RENAME_EXCHANGE)``: both sides into the upper layer, one atomic exchange.

        The kernel's overlayfs answers EXDEV when either side is a directory of a lower layer
        (without ``redirect_dir``); here such a directory is copied up whole and made opaque
        first, as :meth:`rename` does.  Both names stay occupied, so no whiteout is needed;
        a directory that lands where a lower layer has the name is made opaque, so the lower
        directory there cannot merge into it.
        """
        if os.path.samestat(a.st, b.st):
            return
        for node in (a, b):
            if node.is_dir:
                if self.stack.dir_layers(node.path) != (0,):
                    copy.copy_tree(node.path)
                    set_opaque(self.stack.real(0, node.path))
                    self.stack.forget(node.path)
            else:
                copy.copy_up(node)
        real_a, real_b = self.stack.real(0, a.path), self.stack.real(0, b.path)
        renameat2(real_a, real_b, RENAME_EXCHANGE)
        self.stack.forget(a.path)
        self.stack.forget(b.path)
        for moved, now in ((a, b.path), (b, a.path)):
            if moved.is_dir and self.stack.lower_has(now):
                set_opaque(self.stack.real(0, now))
        self._described.discard(a.path)
        self._described.discard(b.path)

    # -- metadata ------------------------------------------------------------------------------

    def _upper_for_change(self, path: str) -> tuple[str, Node]:
        copy = self._writable()
        with self._mutex:
            node = self.stack.resolve(path)
            return copy.copy_up(node), node

    def _meta_target(self, path: str | None, fh: int | None) -> str | int:
        """What a metadata change acts on: the upper real path, or an upper fd (``fchmod``)."""
        if path is None:
            if fh is None:
                raise FuseOSError(errno.EBADF)
            opened = self._files.get(fh)
            if opened is None:
                self._writable()
                return fh
            path = opened[0]  # opened read-only in a lower layer: copy up by name
        return self._upper_for_change(path)[0]

    @staticmethod
    def _stat(target: str | int) -> os.stat_result:
        return os.stat(target) if isinstance(target, int) else os.lstat(target)

    @op
    def chmod(self, path: str | None, mode: int, fh: int | None = None) -> int:
        target = self._meta_target(path, fh)
        st = self._stat(target)
        current = self.attrs.override(target, st)
        if current is not None:
            value = format_override(current.uid, current.gid, mode)
            os.setxattr(target, override_name(target), value)
            self.attrs.forget_override(target)
        elif not stat.S_ISLNK(st.st_mode):
            os.chmod(target, stat.S_IMODE(mode))
        return 0

    @op
    def chown(self, path: str | None, uid: int, gid: int, fh: int | None = None) -> int:
        disk_uid, disk_gid = self.ownership.on_disk(uid, gid)
        if (uid != -1 and disk_uid == -1) or (gid != -1 and disk_gid == -1):
            raise FuseOSError(errno.EINVAL)  # an id outside uidmapping/gidmapping
        target = self._meta_target(path, fh)
        current = self.attrs.override(target, self._stat(target))
        if current is not None:
            # the override holds on-disk ids, as a real owner would (see ownership.py)
            new_uid = current.uid if disk_uid == -1 else disk_uid
            new_gid = current.gid if disk_gid == -1 else disk_gid
            value = format_override(new_uid, new_gid, current.mode)
            os.setxattr(target, override_name(target), value)
            self.attrs.forget_override(target)
            return 0
        try:
            if isinstance(target, int):
                os.chown(target, disk_uid, disk_gid)
            else:
                os.chown(target, disk_uid, disk_gid, follow_symlinks=False)
        except OSError as exc:
            # squashed owners are all the union shows: like fuse-overlayfs, chown then
            # succeeds even where the disk refuses it (tar and package managers chown a lot)
            if not self.ownership.squashed or exc.errno not in (errno.EPERM, errno.EINVAL):
                raise
        return 0

    @op
    def utimens(
        self,
        path: str | None,
        times: tuple[int | None, int | None] | None = None,
        fh: int | None = None,
    ) -> int:
        target = self._meta_target(path, fh)
        follow = isinstance(target, int)
        if times is None:
            os.utime(target, follow_symlinks=follow)
            return 0
        atime, mtime = times
        if atime is None or mtime is None:
            st = self._stat(target)
            atime = st.st_atime_ns if atime is None else atime
            mtime = st.st_mtime_ns if mtime is None else mtime
        os.utime(target, ns=(int(atime), int(mtime)), follow_symlinks=follow)
        return 0

    @op
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        if name.startswith(PRIVATE_XATTR_PREFIXES):
            raise FuseOSError(errno.EPERM)
        real, _node = self._upper_for_change(path)
        os.setxattr(real, name, value, options, follow_symlinks=False)
        if name in OVERRIDE_XATTRS:
            self.attrs.forget_override(real)
        return 0

    @op
    def removexattr(self, path: str, name: str) -> int:
        if name.startswith(PRIVATE_XATTR_PREFIXES):
            raise FuseOSError(errno.ENODATA)
        node = self.stack.resolve(path)
        os.getxattr(node.real, name, follow_symlinks=False)  # ENODATA before any copy-up
        real, _node = self._upper_for_change(path)
        os.removexattr(real, name, follow_symlinks=False)
        if name in OVERRIDE_XATTRS:
            self.attrs.forget_override(real)
        return 0


class _DirHandle:
    """An open directory: its merged path, and the listing readdir offsets index."""

    __slots__ = ("path", "listing", "plus")

    def __init__(self, path: str) -> None:
        self.path = path
        self.listing: list[tuple[str, int, int, int]] | None = None
        self.plus = True


def _key(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _need(path: str | None) -> str:
    if path is None:
        raise FuseOSError(errno.EBADF)
    return path
