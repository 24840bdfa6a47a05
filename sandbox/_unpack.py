"""Stream one layer tar into the overlay on-disk format (the engine of ``layers.unpack_layer``).

Every member goes through ``check_member`` and is then created relative to an ``O_NOFOLLOW``
directory fd (``DirTree``). An in-memory map of what this layer has created so far gives clear
errors (write through a symlink, hard link to a missing path or a directory) before the kernel
would refuse the same thing with ``ELOOP``.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import stat
import tarfile
from dataclasses import dataclass, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import BinaryIO, Literal, cast

from sandbox._layer_codec import ForwardReader
from sandbox._tarsafe import OPAQUE_MARKER, WHITEOUT_PREFIX, DirTree, check_member
from sandbox._tarstream import TarStream
from sandbox.errors import OutsideDestinationError, SandboxError, SpecialFileError

__all__ = ["OwnerPolicy", "UnpackStats", "unpack_stream", "OVERRIDE_XATTR", "OPAQUE_XATTR",
           "format_override", "is_ignored_xattr"]

logger = logging.getLogger(__name__)

OwnerPolicy = Literal["chown", "xattr", "ignore"]
OVERRIDE_XATTR = "user.containers.override_stat"
OPAQUE_XATTR = "user.overlay.opaque"
# xattrs a layer may never set: overlayfs control (redirect, metacopy, opaque: only whiteouts
# make those), and the ownership overrides fuse-overlayfs trusts.
_FORBIDDEN_XATTR_PREFIXES = ("user.overlay.", "user.containers.", "user.fuseoverlayfs.",
                             "user.rootlesscontainers")
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# kinds of what this layer created, by relative path
_DIR, _FILE, _LINK, _FIFO, _WHITEOUT, _WHITEOUT_FILE = "d", "f", "l", "p", "w", "W"


@dataclass(frozen=True)
class UnpackStats:
    """Counts of one unpack, for the per-layer log line."""

    members: int
    files: int
    dirs: int
    symlinks: int
    hardlinks: int
    whiteouts: int
    opaque_dirs: int
    devices_skipped: int
    bytes: int
    fifos: int = 0
    xattrs_skipped: int = 0
    owner_overrides: int = 0

    def __add__(self, other: UnpackStats) -> UnpackStats:
        return UnpackStats(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                              for f in fields(self)})

    def summary(self) -> str:
        """One line of counts, e.g. for ``layer 2/5: ...``."""
        return ", ".join(f"{getattr(self, f.name)} {f.name.replace('_', ' ')}"
                         for f in fields(self) if getattr(self, f.name))


def format_override(uid: int, gid: int, mode: int, kind: str) -> bytes:
    """The ``user.containers.override_stat`` value, containers/storage's ``uid:gid:0mode:type``.

    fuse-overlayfs parses it with ``sscanf("%d:%d:%o")``; containers/storage appends the type.
    """
    return f"{uid}:{gid}:0{stat.S_IMODE(mode):o}:{kind}".encode()


def is_ignored_xattr(name: str) -> bool:
    """True for xattrs never carried between a tar and a layer dir (overlay/override control)."""
    return name.startswith(_FORBIDDEN_XATTR_PREFIXES) or name.startswith("trusted.overlay.")


def _pax_time_ns(raw: str) -> int | None:
    """Nanoseconds of a PAX time ("1700000000.123456789"), exactly; None if malformed."""
    sec, dot, frac = raw.partition(".")
    if sec.isdigit() and (not dot or frac.isdigit()):
        return int(sec) * 1_000_000_000 + int((frac + "000000000")[:9])
    try:  # negative or exotic: let Decimal do it
        return int(Decimal(raw).scaleb(9).to_integral_value())
    except (InvalidOperation, ValueError):
        return None


def _mtime_ns(member: tarfile.TarInfo) -> int:
    raw = member.pax_headers.get("mtime")
    ns = _pax_time_ns(raw) if raw is not None else None
    return ns if ns is not None else int(member.mtime) * 1_000_000_000


class _Unpacker:
    def __init__(self, tree: DirTree, owners: OwnerPolicy) -> None:
        self.tree = tree
        self.owners = owners
        self.kinds: dict[str, str] = {"": _DIR}
        self.dir_times: dict[str, tuple[int, int]] = {}
        self.counts: dict[str, int] = {f.name: 0 for f in fields(UnpackStats)}
        self.failed_owners: set[tuple[int, int]] = set()
        self.mknod_ok = True
        self.euid = os.geteuid()
        self.root_override: bytes | None = None
        self.root_meta = format_override(0, 0, 0o755, "dir")
        self.buf = memoryview(bytearray(1 << 20))

    # -- entry point -------------------------------------------------------------------------
    def run(self, fileobj: BinaryIO) -> UnpackStats:
        reader = ForwardReader(fileobj)
        tar = TarStream(reader)
        while True:
            member = tar.next()
            if member is None:
                break
            self.counts["members"] += 1
            try:
                self._member(member, reader)
            except OSError as exc:
                raise _os_error(exc, member.name) from exc
        return self._finish()

    def _finish(self) -> UnpackStats:
        for rel in sorted(self.dir_times, key=lambda r: r.count("/"), reverse=True):
            atime, mtime = self.dir_times[rel]
            os.utime(self.tree.fd(rel), ns=(atime, mtime))
        if self.root_override is None and self.counts["owner_overrides"]:
            self.root_override = self.root_meta
        # fuse-overlayfs reads overrides only in layers whose root dir has one
        if self.root_override is not None:
            self._setxattr(self.tree.root_fd, OVERRIDE_XATTR, self.root_override)
        return UnpackStats(**self.counts)

    # -- members -----------------------------------------------------------------------------
    def _member(self, raw: tarfile.TarInfo, reader: ForwardReader) -> None:
        member = check_member(raw, in_place=True)
        rel = member.name
        base = posixpath.basename(rel)
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(member, rel, base)
            return
        if member.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            self.counts["devices_skipped"] += 1
            return
        if rel == "":
            self._root(member)
            return
        self._prepare(rel, member)
        if member.isreg():
            self._file(member, rel, reader)
        elif member.isdir():
            self._dir(member, rel)
        elif member.issym():
            self._symlink(member, rel)
        elif member.islnk():
            self._hardlink(member, rel)
        elif member.isfifo():
            self._fifo(member, rel)

    def _prepare(self, rel: str, member: tarfile.TarInfo) -> None:
        """Make ``rel``'s parents exist as directories and clear ``rel`` unless it is kept."""
        self._ensure_dir(posixpath.dirname(rel), member.name)
        kind = self.kinds.get(rel)
        if kind is None or (kind == _DIR and member.isdir()):
            return
        self._remove(rel)
        if kind in (_WHITEOUT, _WHITEOUT_FILE) and member.isdir():
            self.kinds[rel] = "opaque-pending"  # same-layer re-create: still hide lower layers

    def _ensure_dir(self, rel: str, member: str) -> None:
        kind = self.kinds.get(rel)
        if kind == _DIR:
            return
        if kind == _LINK:
            raise OutsideDestinationError(
                f"layer member {member!r} would be written through symlink {rel!r}",
                member=member, target=rel, hint="the image is malformed or malicious")
        if kind in (_FILE, _FIFO):
            raise SpecialFileError(f"layer member {member!r} is below non-directory {rel!r}",
                                   member=member, target=rel)
        self._ensure_dir(posixpath.dirname(rel), member)
        opaque = kind in (_WHITEOUT, _WHITEOUT_FILE)
        if opaque:
            self._remove(rel)
        pfd, name = self.tree.parent_fd(rel)
        os.mkdir(name, 0o755, dir_fd=pfd)
        os.fchmod(self.tree.fd(rel), 0o755)  # implicit parents are 0755 as in Docker, any umask
        self.kinds[rel] = _DIR
        if opaque:
            self._set_opaque(rel)

    def _remove(self, rel: str) -> None:
        kind = self.kinds.pop(rel, None)
        if kind == _DIR:
            prefix = rel + "/"
            for key in [k for k in self.kinds if k.startswith(prefix)]:
                del self.kinds[key]
            for key in [k for k in self.dir_times if k == rel or k.startswith(prefix)]:
                del self.dir_times[key]
        target = rel
        if kind == _WHITEOUT_FILE:
            head, base = posixpath.split(rel)
            target = posixpath.join(head, WHITEOUT_PREFIX + base)
        self.tree.remove(target)

    def _root(self, member: tarfile.TarInfo) -> None:
        fd = self.tree.root_fd
        self.root_override = self._owner(fd, member, "dir")
        self.root_meta = format_override(member.uid, member.gid, member.mode, "dir")
        self._xattrs(fd, member)
        self.dir_times[""] = self._times(member)

    def _file(self, member: tarfile.TarInfo, rel: str, reader: ForwardReader) -> None:
        pfd, name = self.tree.parent_fd(rel)
        fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=pfd)
        try:
            chunks = cast("list[tuple[int, int]] | None", member.sparse)
            if chunks:
                for offset, size in chunks:
                    os.lseek(fd, offset, os.SEEK_SET)
                    reader.copy_to_fd(fd, size, self.buf, member=member.name)
                os.ftruncate(fd, member.size)
            else:
                reader.copy_to_fd(fd, member.size, self.buf, member=member.name)
            self._owner(fd, member, "file")
            self._xattrs(fd, member)
            os.utime(fd, ns=self._times(member))
        finally:
            os.close(fd)
        self.kinds[rel] = _FILE
        self.counts["files"] += 1
        self.counts["bytes"] += member.size

    def _dir(self, member: tarfile.TarInfo, rel: str) -> None:
        pending_opaque = self.kinds.get(rel) == "opaque-pending"
        if self.kinds.get(rel) != _DIR:
            pfd, name = self.tree.parent_fd(rel)
            os.mkdir(name, 0o700, dir_fd=pfd)
            self.kinds[rel] = _DIR
            self.counts["dirs"] += 1
        fd = self.tree.fd(rel)
        self._owner(fd, member, "dir")
        self._xattrs(fd, member)
        if pending_opaque:
            self._set_opaque(rel)
        self.dir_times[rel] = self._times(member)

    def _symlink(self, member: tarfile.TarInfo, rel: str) -> None:
        pfd, name = self.tree.parent_fd(rel)
        os.symlink(member.linkname, name, dir_fd=pfd)
        if self.owners == "chown" and (member.uid, member.gid) not in self.failed_owners:
            try:
                os.chown(name, member.uid, member.gid, dir_fd=pfd, follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EPERM):
                    raise
                self.failed_owners.add((member.uid, member.gid))
        os.utime(name, ns=self._times(member), dir_fd=pfd, follow_symlinks=False)
        self.kinds[rel] = _LINK
        self.counts["symlinks"] += 1

    def _hardlink(self, member: tarfile.TarInfo, rel: str) -> None:
        target = member.linkname
        parent = posixpath.dirname(target)
        while parent:
            if self.kinds.get(parent) == _LINK:
                raise OutsideDestinationError(
                    f"hard link {member.name!r} goes through symlink {parent!r}",
                    member=member.name, target=target, hint="the image is malformed or malicious")
            parent = posixpath.dirname(parent)
        kind = self.kinds.get(target)
        if kind == _DIR:
            raise SpecialFileError(f"hard link {member.name!r} points to directory {target!r}",
                                   member=member.name, target=target)
        if kind not in (_FILE, _LINK, _FIFO):
            raise SpecialFileError(
                f"hard link {member.name!r} points to {target!r}, which is not earlier in the "
                "layer", member=member.name, target=target)
        src_fd, src_name = self.tree.parent_fd(target)
        pfd, name = self.tree.parent_fd(rel)
        os.link(src_name, name, src_dir_fd=src_fd, dst_dir_fd=pfd, follow_symlinks=False)
        self.kinds[rel] = kind
        self.counts["hardlinks"] += 1

    def _fifo(self, member: tarfile.TarInfo, rel: str) -> None:
        pfd, name = self.tree.parent_fd(rel)
        os.mkfifo(name, 0o600, dir_fd=pfd)
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=pfd)
        try:
            self._owner(fd, member, "pipe")
            os.utime(fd, ns=self._times(member))
        finally:
            os.close(fd)
        self.kinds[rel] = _FIFO
        self.counts["fifos"] += 1

    # -- whiteouts ---------------------------------------------------------------------------
    def _whiteout(self, member: tarfile.TarInfo, rel: str, base: str) -> None:
        parent = posixpath.dirname(rel)
        self._ensure_dir(parent, member.name)
        if base == OPAQUE_MARKER:
            self._set_opaque(parent)
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            logger.debug("ignoring aufs metadata %s", member.name)
            return
        target = posixpath.join(parent, base[len(WHITEOUT_PREFIX):])
        if target in self.kinds:
            self._remove(target)  # Docker's rule: a whiteout also drops the same-layer entry
        pfd, name = self.tree.parent_fd(target)
        kind = self.kinds[target] = self._make_whiteout(pfd, name)
        if kind == _WHITEOUT:
            os.utime(name, ns=self._times(member), dir_fd=pfd, follow_symlinks=False)
        self.counts["whiteouts"] += 1

    def _make_whiteout(self, pfd: int, name: str) -> str:
        if self.mknod_ok:
            try:
                os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=pfd)
                return _WHITEOUT
            except PermissionError:
                logger.info("mknod of a whiteout refused; using .wh. files instead")
                self.mknod_ok = False
        fd = os.open(WHITEOUT_PREFIX + name, _FILE_FLAGS, 0o600, dir_fd=pfd)
        os.close(fd)
        return _WHITEOUT_FILE

    def _set_opaque(self, rel: str) -> None:
        fd = self.tree.fd(rel)
        try:
            os.setxattr(fd, OPAQUE_XATTR, b"y")
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                raise
            os.close(os.open(OPAQUE_MARKER, _FILE_FLAGS, 0o600, dir_fd=fd))
        self.counts["opaque_dirs"] += 1

    # -- metadata ----------------------------------------------------------------------------
    def _times(self, member: tarfile.TarInfo) -> tuple[int, int]:
        mtime = _mtime_ns(member)
        raw = member.pax_headers.get("atime")
        atime = _pax_time_ns(raw) if raw is not None else None
        return (atime if atime is not None else mtime), mtime

    def _owner(self, fd: int, member: tarfile.TarInfo, kind: str) -> bytes | None:
        """chown/chmod ``fd``; write the override xattr where needed; return its value."""
        uid, gid = member.uid, member.gid
        wanted = stat.S_IMODE(member.mode)
        chowned = False
        if self.owners == "chown" and (uid, gid) not in self.failed_owners:
            try:
                os.fchown(fd, uid, gid)
                chowned = True
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EPERM):
                    raise
                self.failed_owners.add((uid, gid))
        if chowned and uid != self.euid:
            os.fchmod(fd, wanted)  # another (mapped) owner: keep the mode exactly
            return None
        forced = wanted | (0o700 if kind == "dir" else 0o600)
        os.fchmod(fd, forced)
        if self.owners == "ignore" or kind not in ("dir", "file"):
            return None
        if chowned and forced == wanted:
            return None
        if not chowned and (uid, gid) == (0, 0) and forced == wanted:
            return None
        value = format_override(uid, gid, wanted, kind)
        self._setxattr(fd, OVERRIDE_XATTR, value)
        self.counts["owner_overrides"] += 1
        return value

    def _setxattr(self, fd: int, name: str, value: bytes) -> None:
        try:
            os.setxattr(fd, name, value)
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EPERM, errno.E2BIG, errno.ERANGE):
                raise
            self.counts["xattrs_skipped"] += 1

    def _xattrs(self, fd: int, member: tarfile.TarInfo) -> None:
        for key, value in member.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            name = key[len("SCHILY.xattr."):]
            if not name.startswith("user.") or is_ignored_xattr(name):
                # security.capability, trusted.*, overlay and override control
                self.counts["xattrs_skipped"] += 1
                continue
            self._setxattr(fd, name, value.encode("utf-8", "surrogateescape"))


def _os_error(exc: OSError, name: str) -> SandboxError:
    hint = {errno.ENOSPC: "free some disk space, then retry",
            errno.EDQUOT: "the disk quota is exhausted; free some space",
            errno.ENAMETOOLONG: "the image has a path this filesystem cannot hold"}.get(
        exc.errno or 0, "unpack into a filesystem of your own, e.g. under $XDG_DATA_HOME")
    return SandboxError(f"cannot unpack layer member {name!r}: {exc.strerror or exc}",
                        hint=hint)


def unpack_stream(fileobj: BinaryIO, dest: Path, owners: OwnerPolicy) -> UnpackStats:
    """Unpack the uncompressed tar stream ``fileobj`` into the empty directory ``dest``."""
    with DirTree(dest) as tree:
        with os.scandir(tree.root_fd) as entries:
            if any(True for _ in entries):
                raise SandboxError(f"layer directory {dest} is not empty",
                                   hint="unpack into a fresh temporary directory")
        return _Unpacker(tree, owners).run(fileobj)
