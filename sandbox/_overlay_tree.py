"""Reading and copying trees in the overlay on-disk format (whiteouts, opaque dirs, overrides).

Used by ``layers.write_layer`` (upper dir → tar), ``layers.diff_upper`` and
``layers.flatten_layers``/``import_rootfs`` (layer dirs → one plain tree). Every walk is
fd-relative with ``O_NOFOLLOW``, so a container that swaps a directory for a symlink while we
read its upper dir cannot make us read or write host files.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sandbox._tarsafe import OPAQUE_MARKER, WHITEOUT_PREFIX, DirTree
from sandbox._unpack import OVERRIDE_XATTR, OwnerPolicy, format_override, is_ignored_xattr

__all__ = ["DIR_FLAGS", "Entry", "whiteout_target", "is_opaque", "read_override", "walk",
           "merged_lookup", "merged_children", "TreeCopier"]

logger = logging.getLogger(__name__)

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPAQUE_XATTRS = ("user.overlay.opaque", "trusted.overlay.opaque")


@dataclass(frozen=True)
class Entry:
    """One directory entry met by ``walk``: its parent dir fd, name, path and lstat."""

    dir_fd: int
    name: str
    rel: str
    st: os.stat_result


def whiteout_target(name: str, st: os.stat_result) -> str | None:
    """The name a whiteout entry hides (char 0:0 device or ``.wh.NAME`` file), else None."""
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return name
    if (stat.S_ISREG(st.st_mode) and name.startswith(WHITEOUT_PREFIX)
            and not name.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX)):
        return name[len(WHITEOUT_PREFIX):]
    return None


def is_opaque(dir_fd: int) -> bool:
    """True if the directory open as ``dir_fd`` is opaque (xattr or ``.wh..wh..opq``)."""
    for name in _OPAQUE_XATTRS:
        try:
            if os.getxattr(dir_fd, name) == b"y":
                return True
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
                raise
    try:
        os.lstat(OPAQUE_MARKER, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def read_override(fd: int) -> tuple[int, int, int] | None:
    """``(uid, gid, mode)`` from ``user.containers.override_stat``, if set and well-formed."""
    try:
        raw = os.getxattr(fd, OVERRIDE_XATTR)
    except OSError:
        return None
    parts = raw.decode("ascii", "replace").split(":")
    try:
        return int(parts[0]), int(parts[1]), int(parts[2], 8)
    except (IndexError, ValueError):
        logger.warning("ignoring malformed %s %r", OVERRIDE_XATTR, raw)
        return None


def walk(dir_fd: int, rel: str = "") -> Iterator[tuple[Entry, int | None]]:
    """Pre-order walk in byte-sorted name order; directories come with an open fd.

    The fd yielded with a directory is valid until the walk moves past its subtree.
    """
    with os.scandir(dir_fd) as it:
        items = sorted(((e.name, e.stat(follow_symlinks=False)) for e in it),
                       key=lambda item: os.fsencode(item[0]))
    for name, st in items:
        child = f"{rel}/{name}" if rel else name
        entry = Entry(dir_fd, name, child, st)
        if not stat.S_ISDIR(st.st_mode):
            yield entry, None
            continue
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                continue  # swapped or removed under us: skip, never follow
            raise
        try:
            yield entry, fd
            yield from walk(fd, child)
        finally:
            os.close(fd)


def _lstat_at(dir_path: str, name: str) -> os.stat_result | None:
    try:
        return os.lstat(os.path.join(dir_path, name))
    except (FileNotFoundError, NotADirectoryError):
        return None


def _layer_hides(dir_path: str, name: str) -> bool:
    st = _lstat_at(dir_path, WHITEOUT_PREFIX + name)
    return st is not None and stat.S_ISREG(st.st_mode)


def merged_lookup(lowers: Sequence[Path], rel: str) -> os.stat_result | None:
    """lstat of ``rel`` in the union of ``lowers`` (top-first), honouring whiteouts/opaque."""
    layers = [str(p) for p in lowers]
    parts = [p for p in rel.split("/") if p]
    if not parts:
        return os.lstat(layers[0]) if layers else None
    for depth, name in enumerate(parts):
        last = depth == len(parts) - 1
        next_layers: list[str] = []
        for layer_dir in layers:
            st = _lstat_at(layer_dir, name)
            if st is None:
                if _layer_hides(layer_dir, name):
                    break
                continue
            if whiteout_target(name, st) == name:
                break
            if last:
                return st
            if not stat.S_ISDIR(st.st_mode):
                break
            path = os.path.join(layer_dir, name)
            next_layers.append(path)
            fd = os.open(path, DIR_FLAGS)
            try:
                if is_opaque(fd):
                    break
            finally:
                os.close(fd)
        if not next_layers:
            return None
        layers = next_layers
    return None  # pragma: no cover


def merged_children(lowers: Sequence[Path], rel: str) -> set[str]:
    """Names visible in directory ``rel`` of the union of ``lowers`` (top-first)."""
    layers = [str(p) for p in lowers]
    for name in [p for p in rel.split("/") if p]:
        next_layers = []
        for layer_dir in layers:
            path = os.path.join(layer_dir, name)
            st = _lstat_at(layer_dir, name)
            if st is None:
                if _layer_hides(layer_dir, name):
                    break
                continue
            if not stat.S_ISDIR(st.st_mode):
                break
            next_layers.append(path)
            fd = os.open(path, DIR_FLAGS)
            try:
                if is_opaque(fd):
                    break
            finally:
                os.close(fd)
        layers = next_layers
    visible: set[str] = set()
    hidden: set[str] = set()
    for layer_dir in layers:
        fd = os.open(layer_dir, DIR_FLAGS)
        try:
            with os.scandir(fd) as it:
                for e in it:
                    st = e.stat(follow_symlinks=False)
                    target = whiteout_target(e.name, st)
                    if target is not None:
                        hidden.add(target)
                    elif e.name != OPAQUE_MARKER and e.name not in hidden:
                        visible.add(e.name)
            if is_opaque(fd):
                break
        finally:
            os.close(fd)
    return visible


class TreeCopier:
    """Apply a source tree onto ``dest`` (a ``DirTree``), never following symlinks in ``dest``.

    ``overlay_format``: the source is a layer dir (whiteouts delete, opaque dirs clear).
    Owners are kept with ``lchown`` where the namespace allows; otherwise the override xattr is
    copied or written so fuse-overlayfs still shows the right owner.
    """

    def __init__(self, dest: DirTree, *, overlay_format: bool,
                 owners: OwnerPolicy = "chown") -> None:
        self.dest = dest
        self.overlay_format = overlay_format
        self.owners = owners
        self.dir_times: dict[str, tuple[int, int]] = {}
        self.devices_skipped = 0
        self.counts = {"files": 0, "dirs": 0, "symlinks": 0, "hardlinks": 0, "fifos": 0,
                       "bytes": 0, "whiteouts": 0}

    def apply(self, src_fd: int) -> None:
        inodes: dict[tuple[int, int], str] = {}
        for entry, fd in walk(src_fd):
            st = entry.st
            if self.overlay_format:
                target = whiteout_target(entry.name, st)
                if target is not None:
                    parent = os.path.dirname(entry.rel)
                    self.dest.remove(os.path.join(parent, target) if parent else target)
                    self.counts["whiteouts"] += 1
                    continue
                if entry.name.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
                    continue
            existing = self.dest.lstat(entry.rel)
            if fd is not None:
                self._dir(entry, fd, existing)
                continue
            if existing is not None:
                self.dest.remove(entry.rel)
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in inodes:
                src_pfd, src_name = self.dest.parent_fd(inodes[key])
                pfd, name = self.dest.parent_fd(entry.rel)
                os.link(src_name, name, src_dir_fd=src_pfd, dst_dir_fd=pfd,
                        follow_symlinks=False)
                self.counts["hardlinks"] += 1
                continue
            if self._leaf(entry) and st.st_nlink > 1:
                inodes[key] = entry.rel

    def finish(self) -> None:
        for rel in sorted(self.dir_times, key=lambda r: r.count("/"), reverse=True):
            atime, mtime = self.dir_times[rel]
            os.utime(self.dest.fd(rel), ns=(atime, mtime))

    def _dir(self, entry: Entry, src_fd: int, existing: os.stat_result | None) -> None:
        if existing is not None and not stat.S_ISDIR(existing.st_mode):
            self.dest.remove(entry.rel)
            existing = None
        if existing is not None and self.overlay_format and is_opaque(src_fd):
            dfd = self.dest.fd(entry.rel)
            for name in os.listdir(dfd):
                self.dest.remove(f"{entry.rel}/{name}")
        if existing is None:
            pfd, name = self.dest.parent_fd(entry.rel)
            os.mkdir(name, 0o700, dir_fd=pfd)
            self.counts["dirs"] += 1
        dfd = self.dest.fd(entry.rel)
        self._meta(src_fd, dfd, entry.st)
        self.dir_times[entry.rel] = (entry.st.st_atime_ns, entry.st.st_mtime_ns)

    def _leaf(self, entry: Entry) -> bool:
        st = entry.st
        pfd, name = self.dest.parent_fd(entry.rel)
        if stat.S_ISREG(st.st_mode):
            src = os.open(entry.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=entry.dir_fd)
            try:
                dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                              | os.O_CLOEXEC, 0o600, dir_fd=pfd)
                try:
                    _copy_data(src, dst, st.st_size)
                    self._meta(src, dst, st)
                    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
                finally:
                    os.close(dst)
            finally:
                os.close(src)
            self.counts["files"] += 1
            self.counts["bytes"] += st.st_size
            return True
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(entry.name, dir_fd=entry.dir_fd), name, dir_fd=pfd)
            if self.owners == "chown":
                try:
                    os.chown(name, st.st_uid, st.st_gid, dir_fd=pfd, follow_symlinks=False)
                except OSError as exc:
                    if exc.errno not in (errno.EPERM, errno.EINVAL):
                        raise
            os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=pfd,
                     follow_symlinks=False)
            self.counts["symlinks"] += 1
            return True
        if stat.S_ISFIFO(st.st_mode):
            os.mkfifo(name, 0o600, dir_fd=pfd)
            flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
            src = os.open(entry.name, flags, dir_fd=entry.dir_fd)
            try:
                dst = os.open(name, flags, dir_fd=pfd)
                try:
                    self._meta(src, dst, st)
                    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
                finally:
                    os.close(dst)
            finally:
                os.close(src)
            self.counts["fifos"] += 1
            return True
        self.devices_skipped += 1  # devices, sockets (whiteouts were handled by the caller)
        return False

    def _meta(self, src_fd: int, dst_fd: int, st: os.stat_result) -> None:
        xattrs = _read_xattrs(src_fd)
        want_override = self.owners == "xattr" and (st.st_uid, st.st_gid) != (0, 0)
        if self.owners == "chown":
            try:
                os.fchown(dst_fd, st.st_uid, st.st_gid)
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EINVAL):
                    raise
                want_override = True
        mode = stat.S_IMODE(st.st_mode)
        override = None
        if want_override and OVERRIDE_XATTR not in xattrs:
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
            override = format_override(st.st_uid, st.st_gid, mode, kind)
        os.fchmod(dst_fd, mode | (0o700 if stat.S_ISDIR(st.st_mode) else 0))
        if override is not None:
            xattrs[OVERRIDE_XATTR] = override
        for name, value in xattrs.items():
            try:
                os.setxattr(dst_fd, name, value)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise


def _read_xattrs(fd: int) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    try:
        names = os.listxattr(fd)
    except OSError:
        return out
    for name in names:
        if name != OVERRIDE_XATTR and (is_ignored_xattr(name) or not name.startswith("user.")):
            continue
        try:
            out[name] = os.getxattr(fd, name)
        except OSError:
            continue
    return out


def _copy_data(src: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes (reflink/in-kernel where the filesystem allows)."""
    left = size
    try:
        while left > 0:
            n = os.copy_file_range(src, dst, min(left, 1 << 30))
            if n == 0:
                break
            left -= n
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    os.lseek(src, size - left, os.SEEK_SET)
    os.lseek(dst, size - left, os.SEEK_SET)
    with open(src, "rb", closefd=False) as fsrc, open(dst, "wb", closefd=False) as fdst:
        shutil.copyfileobj(fsrc, fdst, 1 << 20)
