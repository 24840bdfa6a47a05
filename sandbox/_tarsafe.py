"""Never-trusting pieces of layer extraction: member checks and symlink-proof directory access.

Two defences work together (STYLE.md convention 8):

* ``check_member`` / ``layer_filter`` refuse a member by its header alone: ``..`` escapes, NUL
  bytes, negative sizes, absolute or escaping hard links, whiteouts of ``.``/``..``, unknown types.
* ``DirTree`` opens every directory component by component with ``O_NOFOLLOW`` from a root fd, and
  every create/link/chown/utime is done relative to such a directory fd. A symlink planted by an
  earlier member therefore can never be followed, and nothing can be written outside the root,
  even if another process races us. ``realpath`` + ``commonpath`` (``layer_filter``) is kept for
  callers that extract with ``tarfile.extractall(filter=...)``; ``unpack_layer`` relies on the fds,
  which are race-free and cost no extra ``lstat`` per path component.
"""

from __future__ import annotations

import copy
import errno
import os
import posixpath
import shutil
import stat
import tarfile
from collections import OrderedDict
from pathlib import Path

from sandbox.errors import (
    AbsoluteLinkError,
    OutsideDestinationError,
    SpecialFileError,
    UnsafeLayerMember,
)

__all__ = [
    "WHITEOUT_PREFIX",
    "OPAQUE_MARKER",
    "check_member",
    "layer_filter",
    "normalize_member_name",
    "DirTree",
]

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_FILE_TYPES = frozenset(tarfile.REGULAR_TYPES)
_KNOWN_TYPES = _FILE_TYPES | {
    tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
    tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE,
}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_DEPTH = 400  # far beyond real images; keeps every recursive walk well inside Python's limit


def normalize_member_name(name: str, *, member: str) -> str:
    """Return ``name`` relative to the destination root ('' for the root itself).

    Leading slashes are stripped (as Docker and GNU tar do); ``a/../b`` is cleaned lexically to
    ``b``; anything that still climbs out is refused.
    """
    if "\x00" in name:
        raise SpecialFileError(f"layer member {member!r} has a NUL byte in its name",
                               member=member)
    stripped = name.lstrip("/")
    if not (".." in stripped or "//" in stripped or "/." in stripped
            or stripped.startswith(".") or stripped.endswith("/")):
        if stripped.count("/") >= MAX_DEPTH:
            raise SpecialFileError(f"layer member {member[:80]!r}... is nested more than "
                                   f"{MAX_DEPTH} directories deep", member=member)
        return stripped  # already clean: the common case
    depth = 0
    for part in stripped.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                raise OutsideDestinationError(
                    f"layer member {member!r} climbs out of the layer with '..'",
                    member=member, hint="the image is malformed or malicious")
        elif part not in ("", "."):
            depth += 1
    rel = posixpath.normpath(stripped) if stripped else "."
    if rel.count("/") >= MAX_DEPTH:
        raise SpecialFileError(f"layer member {member[:80]!r}... is nested more than {MAX_DEPTH} "
                               "directories deep", member=member)
    return "" if rel == "." else rel


def _check_link(member: tarfile.TarInfo) -> str:
    """Validate a hard link's target; return it relative to the root."""
    target = member.linkname
    if "\x00" in target:
        raise SpecialFileError(f"hard link {member.name!r} has a NUL byte in its target",
                               member=member.name, target=target)
    if target.startswith("/"):
        raise AbsoluteLinkError(f"hard link {member.name!r} points to absolute path {target!r}",
                                member=member.name, target=target,
                                hint="hard link targets in a layer must be relative")
    try:
        rel = normalize_member_name(target, member=member.name)
    except OutsideDestinationError as exc:
        raise OutsideDestinationError(
            f"hard link {member.name!r} points outside the layer to {target!r}",
            member=member.name, target=target) from exc
    if rel == "":
        raise SpecialFileError(f"hard link {member.name!r} points to the layer root",
                               member=member.name, target=target)
    return rel


def check_member(member: tarfile.TarInfo, *, in_place: bool = False) -> tarfile.TarInfo:
    """Refuse ``member`` on its header alone; return a copy with a normalised name.

    The returned member's ``name`` is relative ('' is the root), a hard link's ``linkname`` is
    relative too; ``in_place`` updates ``member`` itself (the unpacker owns its members).
    Raises an ``UnsafeLayerMember`` subclass.
    """
    name = member.name
    if member.size < 0:
        raise SpecialFileError(f"layer member {name!r} has a negative size ({member.size})",
                               member=name)
    if member.type not in _KNOWN_TYPES:
        raise SpecialFileError(f"layer member {name!r} has unsupported type {member.type!r}",
                               member=name)
    rel = normalize_member_name(name, member=name)
    base = posixpath.basename(rel)
    parts = rel.split("/")
    if WHITEOUT_PREFIX in rel and any(p.startswith(WHITEOUT_PREFIX) for p in parts[:-1]):
        raise SpecialFileError(f"layer member {name!r} is inside a whiteout", member=name)
    if base.startswith(WHITEOUT_PREFIX) and base != OPAQUE_MARKER:
        hidden = base[len(WHITEOUT_PREFIX):]
        if hidden in ("", ".", ".."):
            raise OutsideDestinationError(
                f"whiteout {name!r} would remove {hidden or 'nothing'!r} outside its directory",
                member=name)
    if rel == "" and member.type != tarfile.DIRTYPE:
        raise SpecialFileError(f"layer member {name!r} replaces the layer root", member=name)
    if "\x00" in member.linkname:
        raise SpecialFileError(f"link {name!r} has a NUL byte in its target", member=name,
                               target=member.linkname)
    linkname = _check_link(member) if member.type == tarfile.LNKTYPE else member.linkname
    if in_place:
        member.name, member.linkname = rel, linkname
        return member
    return _replace(member, name=rel, linkname=linkname)


def _replace(member: tarfile.TarInfo, **changes: object) -> tarfile.TarInfo:
    """``TarInfo.replace`` (3.11.4+) for every 3.11: a shallow copy with some fields changed."""
    new = copy.copy(member)
    for key, value in changes.items():
        setattr(new, key, value)
    return new


def layer_filter(member: tarfile.TarInfo, dest_path: str) -> tarfile.TarInfo | None:
    """PEP 706 extraction filter for layer tars (``tarfile.extractall(filter=layer_filter)``).

    ``check_member`` plus ``realpath`` + ``commonpath`` containment of the member and of a hard
    link's target. Device nodes are skipped (``None``); setuid/setgid are dropped and ``u+rw``
    forced as charliecloud does. Absolute symlink targets are allowed: they resolve inside the
    container, never on the host.
    """
    checked = check_member(member)
    if checked.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        return None
    root = os.path.realpath(dest_path)
    for rel, what in ((checked.name, "member"), (checked.linkname, "hard link target")):
        if what == "hard link target" and checked.type != tarfile.LNKTYPE:
            continue
        real = os.path.realpath(os.path.join(root, rel))
        if os.path.commonpath([root, real]) != root:
            raise OutsideDestinationError(
                f"layer {what} {member.name!r} resolves outside the destination to {real!r}",
                member=member.name, target=real)
        if what == "hard link target" and os.path.isdir(real):
            raise SpecialFileError(f"hard link {member.name!r} points to a directory",
                                   member=member.name, target=checked.linkname)
    mode = checked.mode
    if mode is not None:
        mode &= ~(stat.S_ISUID | stat.S_ISGID)
        mode |= 0o700 if checked.isdir() else 0o600
    return _replace(checked, mode=mode, uid=os.getuid(), gid=os.getgid(), uname="", gname="")


class DirTree:
    """Directory fds under one root, each opened with ``O_NOFOLLOW`` from its parent's fd.

    ``fd(rel)`` never follows a symlink: a component that is a symlink raises
    ``OutsideDestinationError``. A small LRU of open fds keeps the common case (members grouped by
    directory) at one ``openat`` per new directory.
    """

    def __init__(self, root: Path, *, cache_size: int = 64) -> None:
        self.root = root
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._cache: OrderedDict[str, int] = OrderedDict()
        self._cache_size = cache_size

    def close(self) -> None:
        for fd in self._cache.values():
            os.close(fd)
        self._cache.clear()
        os.close(self.root_fd)

    def __enter__(self) -> DirTree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fd(self, rel: str) -> int:
        """An fd of directory ``rel`` ('' is the root); owned by the tree, do not close."""
        if rel == "":
            return self.root_fd
        cached = self._cache.get(rel)
        if cached is not None:
            self._cache.move_to_end(rel)
            return cached
        parent, name = posixpath.split(rel)
        parent_fd = self.fd(parent)
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise OutsideDestinationError(
                    f"refusing to write through symlink or non-directory {rel!r}",
                    member=rel) from exc
            raise
        self._cache[rel] = fd
        if len(self._cache) > self._cache_size:
            _, old = self._cache.popitem(last=False)
            os.close(old)
        return fd

    def parent_fd(self, rel: str) -> tuple[int, str]:
        """The fd of ``rel``'s parent directory and ``rel``'s base name."""
        parent, name = posixpath.split(rel)
        return self.fd(parent), name

    def forget(self, rel: str) -> None:
        """Drop cached fds of ``rel`` and everything under it (after a remove or replace)."""
        prefix = rel + "/"
        for key in [k for k in self._cache if k == rel or k.startswith(prefix)]:
            os.close(self._cache.pop(key))

    def remove(self, rel: str) -> None:
        """Remove ``rel`` (a whole tree if it is a directory) without following symlinks."""
        if rel == "":
            raise UnsafeLayerMember("refusing to remove the layer root", member=rel)
        self.forget(rel)
        pfd, name = self.parent_fd(rel)
        try:
            st = os.lstat(name, dir_fd=pfd)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            _make_tree_removable(pfd, name)
            shutil.rmtree(name, dir_fd=pfd)
        else:
            os.unlink(name, dir_fd=pfd)

    def lstat(self, rel: str) -> os.stat_result | None:
        pfd, name = self.parent_fd(rel)
        try:
            return os.lstat(name, dir_fd=pfd)
        except FileNotFoundError:
            return None


def _make_tree_removable(parent_fd: int, name: str) -> None:
    """Add u+rwx to every directory under ``name`` so ``rmtree`` can empty it."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError:
        return
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o700 != 0o700:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) | 0o700)
        with os.scandir(fd) as entries:
            subdirs = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
        for sub in subdirs:
            _make_tree_removable(fd, sub)
    except PermissionError:
        pass
    finally:
        os.close(fd)
