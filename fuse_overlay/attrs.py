"""What the union reports for an object: stable inode numbers, owners, override_stat modes.

Inode numbers are allocated per real ``(st_dev, st_ino)`` and kept across copy-up (the upper
copy is aliased to the number of the lower one), so they stay stable for the life of the mount.
"""

from __future__ import annotations

import itertools
import os
import stat

from fuse_overlay._fuse import Invalidator
from fuse_overlay.layers import LayerStack, Node
from fuse_overlay.ownership import OVERRIDE_XATTRS, Override, Ownership, parse_override

__all__ = ["Attributes", "read_override"]


class Attributes:
    """Inode table, override_stat cache and hard-link names of one mount."""

    def __init__(self, stack: LayerStack, ownership: Ownership, invalidator: Invalidator) -> None:
        self.ownership = ownership
        self._identity = ownership.identity
        self.invalidator = invalidator
        self.inodes: dict[tuple[int, int], int] = {}
        self._next_ino = itertools.count(2)
        root = stack.resolve("/")
        self.inodes[(root.st.st_dev, root.st.st_ino)] = 1
        # override_stat xattrs by real inode; every change goes through us, so no expiry
        self.overrides: dict[tuple[int, int], Override | None] = {}
        self.links: dict[int, set[str]] = {}  # inode -> names seen, for hard-linked files

    def ino(self, st: os.stat_result) -> int:
        return self.ino_of((st.st_dev, st.st_ino))

    def ino_of(self, key: tuple[int, int]) -> int:
        """The union's inode number for real inode *key* = (st_dev, st_ino)."""
        ino = self.inodes.get(key)
        if ino is None:
            ino = self.inodes.setdefault(key, next(self._next_ino))
        return ino

    def alias(self, node: Node, upper: str) -> None:
        """Give the copy-up *upper* of *node* the inode number *node* had."""
        new = os.lstat(upper)
        key = (new.st_dev, new.st_ino)
        self.inodes[key] = self.ino(node.st)
        self.overrides.pop(key, None)

    def override(self, target: str | int, st: os.stat_result) -> Override | None:
        """The override_stat of the object *target* (real path or fd) whose stat is *st*."""
        key = (st.st_dev, st.st_ino)
        try:
            return self.overrides[key]
        except KeyError:
            pass
        found = None if stat.S_ISLNK(st.st_mode) else read_override(target)
        self.overrides[key] = found
        return found

    def forget_override(self, target: str | int) -> None:
        st = os.stat(target) if isinstance(target, int) else os.lstat(target)
        self.overrides.pop((st.st_dev, st.st_ino), None)

    def gone(self, st: os.stat_result) -> None:
        """The real inode *st* was removed: its number may come back as another object."""
        if st.st_nlink <= 1 or stat.S_ISDIR(st.st_mode):
            self.overrides.pop((st.st_dev, st.st_ino), None)

    def note_links(self, path: str, st: os.stat_result, ino: int) -> None:
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            self.links.setdefault(ino, set()).add(path)

    def invalidate_links(self, ino: int, *, but: str | None = None) -> None:
        for name in self.links.get(ino, ()):
            if name != but:
                self.invalidator.invalidate(name)

    def of(self, target: str | int, st: os.stat_result) -> dict[str, int]:
        """The union's ``stat`` of the real object *target* (path or fd) whose stat is *st*."""
        key = (st.st_dev, st.st_ino)
        try:
            override = self.overrides[key]
        except KeyError:
            override = self.override(target, st)
        mode, uid, gid = st.st_mode, st.st_uid, st.st_gid
        if override is not None:
            mode = stat.S_IFMT(mode) | override.mode
            uid, gid = override.uid, override.gid
        if not self._identity:
            uid, gid = self.ownership.shown(uid, gid)
        ino = self.inodes.get(key)
        if ino is None:
            ino = self.inodes.setdefault(key, next(self._next_ino))
        return {
            "st_mode": mode,
            "st_ino": ino,
            "st_nlink": st.st_nlink,
            "st_uid": uid,
            "st_gid": gid,
            "st_size": st.st_size,
            "st_rdev": st.st_rdev,
            "st_blocks": st.st_blocks,
            "st_blksize": st.st_blksize,
            "st_atime": st.st_atime_ns,
            "st_mtime": st.st_mtime_ns,
            "st_ctime": st.st_ctime_ns,
        }


def read_override(target: str | int) -> Override | None:
    """The override_stat xattr of *target*, if any: one ``listxattr`` for the common file that
    has none (cheaper than asking for each name and failing)."""
    try:
        names = os.listxattr(target)
    except OSError:
        return None
    for name in OVERRIDE_XATTRS:
        if name in names:
            try:
                found = parse_override(os.getxattr(target, name))
            except OSError:
                continue
            if found is not None:
                return found
    return None
