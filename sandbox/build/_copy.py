"""COPY and ADD inside the user namespace: files into an overlay of the stage, then a layer.

``run_copy`` is called through ``run_in_userns``: it mounts the stage's layers under a fresh
upper dir, copies with Docker's directory rules (a directory source copies its contents; a file
goes *into* a destination that ends in ``/`` or is a directory, else becomes it), chowns
(``--chown``; in single-uid mode an id other than 0 is recorded in the
``user.containers.override_stat`` xattr the layer writer reads), applies ``--chmod``,
auto-extracts local tar archives for ADD, and commits the upper dir as the step's layer.
Destination paths are resolved inside the rootfs, following its symlinks (``/bin`` → ``usr/bin``).
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
import tarfile
from dataclasses import dataclass

from sandbox._paths import resolve_in_root
from sandbox._unpack import OVERRIDE_XATTR, format_override
from sandbox.build._commit import LayerResult, commit_upper, overlay_view, private_mounts
from sandbox.build._context import BuildContext, Source, exclude
from sandbox.build.dockerignore import Matcher, clean_path
from sandbox.errors import BuildError
from sandbox.store import Store

__all__ = ["CopyJob", "run_copy", "resolve_owner"]


@dataclass(frozen=True)
class CopyJob:
    """Everything one COPY/ADD step does, picklable for the user-namespace helper."""

    store_root: str
    lowers: tuple[str, ...]
    dest: str
    """Absolute container path; a trailing ``/`` means "a directory"."""
    sources: tuple[Source, ...] = ()
    from_lowers: tuple[str, ...] | None = None
    """``--from``: the layer dirs of the stage or image the ``from_paths`` are read from."""
    from_paths: tuple[str, ...] = ()
    chown: str | None = None
    chmod: int | None = None
    extract: bool = False
    """ADD: extract archives (local ones; remote ones too with ``--unpack=true``)."""
    unpack: bool | None = None
    """ADD ``--unpack``: None as Docker (local archives only), else for every source."""
    keyword: str = "COPY"
    source_date_epoch: int | None = None
    mkdir_only: bool = False
    """WORKDIR: create ``dest`` (owned by ``chown``) and copy nothing."""
    excludes: tuple[str, ...] = ()
    """``--exclude`` patterns (applied here to ``--from`` sources; context ones come filtered)."""
    driver: str = "overlay"
    """The storage driver that mounts the stage: ``overlay`` or ``fuse``."""


def _lookup(root: str, db: str, name: str) -> tuple[int, int] | None:
    try:
        with open(resolve_in_root(root, db), encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.rstrip("\n").split(":")
                if len(parts) >= 3 and parts[0] == name and parts[2].isdigit():
                    gid = int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else -1
                    return int(parts[2]), gid
    except OSError:
        return None
    return None


def resolve_owner(root: str, spec: str | None) -> tuple[int, int] | None:
    """``--chown=user[:group]`` (names looked up in the image's passwd/group files)."""
    if not spec:
        return None
    user, _, group = spec.partition(":")
    if user.isdigit():
        uid = int(user)
    else:
        found = _lookup(root, "/etc/passwd", user)
        if found is None:
            raise BuildError(f"unable to convert uid/gid chown string to host mapping: can't "
                             f"find uid for user {user}: no such user: {user}",
                             hint="use a numeric uid or add the user to /etc/passwd first")
        uid = found[0]
    if not group:
        return uid, uid
    if group.isdigit():
        return uid, int(group)
    found = _lookup(root, "/etc/group", group)
    if found is None:
        raise BuildError(f"unable to convert uid/gid chown string to host mapping: can't "
                         f"find gid for group {group}: no such group: {group}")
    return uid, found[0]


class _Writer:
    """Writes into the mounted rootfs at ``root``."""

    def __init__(self, root: str, owner: tuple[int, int] | None, chmod: int | None) -> None:
        self.root = root
        self.owner = owner
        self.chmod = chmod

    def host(self, path: str, *, follow_last: bool = True) -> str:
        return resolve_in_root(self.root, path, follow_last=follow_last)

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(self.host(path))

    def own(self, path: str, st_mode: int) -> None:
        if self.owner is None:
            return
        uid, gid = self.owner
        try:
            os.lchown(path, uid, gid)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: the id is not mapped (single-uid mode)
                raise
            if stat.S_ISLNK(st_mode):
                return  # a symlink's owner cannot be recorded; nothing reads it
            kind = "dir" if stat.S_ISDIR(st_mode) else "file"
            try:
                os.setxattr(path, OVERRIDE_XATTR, format_override(uid, gid, st_mode, kind))
            except OSError:
                raise BuildError(f"cannot give {path.removeprefix(self.root)} the owner "
                                 f"{uid}:{gid}: only uid 0 is mapped here and the owner "
                                 "cannot be recorded in an xattr on this file system",
                                 hint="add ranges for your user to /etc/subuid and "
                                 "/etc/subgid, or drop --chown") from None

    def ensure_dir(self, path: str) -> str:
        """The host path of directory ``path``, creating what is missing (0755, owned)."""
        parts = [p for p in clean_path(path).split("/") if p]
        current = "/"
        for part in parts:
            current = posixpath.join(current, part)
            host = self.host(current)
            if os.path.isdir(host):
                continue
            if os.path.lexists(host):
                _remove(host)
            os.mkdir(host, 0o755)
            self.own(host, stat.S_IFDIR | 0o755)
        return self.host(current)

    def place(self, src: str, target: str, *, mode: int | None = None,
              mtime: float | None = None) -> None:
        """Copy the single entry ``src`` (not a directory's contents) to host path ``target``."""
        st = os.lstat(src)
        existing = _lstat(target)
        if stat.S_ISDIR(st.st_mode):
            if existing is not None and not stat.S_ISDIR(existing.st_mode):
                _remove(target)
            if existing is None or not stat.S_ISDIR(existing.st_mode):
                os.mkdir(target, 0o700)
            new_mode = self.chmod if self.chmod is not None else stat.S_IMODE(st.st_mode)
            os.chmod(target, new_mode)
            self.own(target, stat.S_IFDIR | new_mode)
            return
        if existing is not None:
            _remove(target)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), target)
            self.own(target, st.st_mode)
            return
        if not stat.S_ISREG(st.st_mode):
            return  # devices, fifos and sockets are not copied
        shutil.copyfile(src, target, follow_symlinks=False)
        new_mode = mode if mode is not None else stat.S_IMODE(st.st_mode)
        if self.chmod is not None:
            new_mode = self.chmod
        os.chmod(target, new_mode)
        when = st.st_mtime if mtime is None else mtime
        os.utime(target, (when, when), follow_symlinks=False)
        self.own(target, stat.S_IFREG | new_mode)

    def copy_dir(self, src: Source, dest: str) -> None:
        self.ensure_dir(dest)
        for rel in src.entries:
            container = posixpath.join(dest, rel)
            parent = self.ensure_dir(posixpath.dirname(container))
            self.place(os.path.join(src.path, rel),
                       os.path.join(parent, posixpath.basename(container)))

    def copy_file(self, src: Source, dest: str) -> None:
        parent = self.ensure_dir(posixpath.dirname(dest) or "/")
        self.place(src.path, os.path.join(parent, posixpath.basename(dest)), mode=src.mode,
                   mtime=src.mtime)

    def extract(self, archive: str, dest: str) -> None:
        """ADD of a local tar: its members under ``dest``, owners as in the archive."""
        base = clean_path(dest)
        self.ensure_dir(base)
        with tarfile.open(archive) as tar:
            for member in tar:
                name = clean_path(member.name.lstrip("/"))
                if name in (".", "") or name == ".." or name.startswith("../"):
                    continue
                container = posixpath.join(base, name)
                parent = self.ensure_dir(posixpath.dirname(container))
                target = os.path.join(parent, posixpath.basename(container))
                self._member(tar, member, target, base)

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, target: str,
                base: str) -> None:
        existing = _lstat(target)
        if existing is not None and not (member.isdir() and stat.S_ISDIR(existing.st_mode)):
            _remove(target)
        mode = member.mode & 0o7777
        if member.isdir():
            if existing is None or not stat.S_ISDIR(existing.st_mode):
                os.mkdir(target, 0o700)
            os.chmod(target, mode | 0o700)
        elif member.issym():
            os.symlink(member.linkname, target)
        elif member.islnk():
            link = self.host(posixpath.join(base, clean_path(member.linkname.lstrip("/"))),
                             follow_last=False)
            if os.path.isfile(link) and not os.path.islink(link):
                os.link(link, target)
            return
        elif member.isreg():
            fileobj = tar.extractfile(member)
            assert fileobj is not None
            with open(target, "wb") as out:
                shutil.copyfileobj(fileobj, out, 1 << 20)
            os.chmod(target, mode)
        else:
            return
        if not member.issym():
            os.utime(target, (member.mtime, member.mtime))
        saved, self.owner = self.owner, self.owner or (member.uid, member.gid)
        try:
            kind = stat.S_IFDIR if member.isdir() else (
                stat.S_IFLNK if member.issym() else stat.S_IFREG)
            self.own(target, kind | mode)
        finally:
            self.owner = saved


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _is_archive(path: str) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except (OSError, tarfile.TarError, EOFError):
        return False


def _extracts(job: CopyJob, src: Source) -> bool:
    """Docker's ADD extracts a local archive, never a downloaded one; BuildKit's
    ``--unpack=true|false`` decides for both."""
    if not job.extract:
        return False
    return (not src.remote) if job.unpack is None else job.unpack


def copy_sources(writer: _Writer, job: CopyJob, sources: list[Source]) -> None:
    dest = job.dest
    if len(sources) > 1 and not dest.endswith("/"):
        raise BuildError(f"When using {job.keyword} with more than one source file, the "
                         "destination must be a directory and end with a /")
    for src in sources:
        if src.is_dir:
            writer.copy_dir(src, dest)
        elif _extracts(job, src) and _is_archive(src.path):
            writer.extract(src.path, dest)
        elif dest.endswith("/") or writer.is_dir(dest):
            writer.copy_file(src, posixpath.join(dest, src.name))
        else:
            writer.copy_file(src, dest)


def run_copy(job: CopyJob) -> LayerResult | None:
    """The whole step, inside the user namespace (``run_in_userns(run_copy, job)``)."""
    store = Store(job.store_root)
    private_mounts()
    tmp = store.mkdtemp(suffix=".copy")
    try:
        with overlay_view(tmp, job.lowers, "dst", job.driver) as (mnt, upper):
            writer = _Writer(mnt, resolve_owner(mnt, job.chown), job.chmod)
            if job.mkdir_only:
                writer.ensure_dir(job.dest)
            elif job.from_lowers is not None:
                with overlay_view(tmp, job.from_lowers, "src", job.driver) as (src_root, _):
                    view = BuildContext(src_root, Matcher([]))
                    sources = [s for p in job.from_paths for s in view.resolve(p, job.keyword)]
                    if job.excludes:
                        sources = exclude(sources, job.excludes)
                    copy_sources(writer, job, sources)
            else:
                copy_sources(writer, job, list(job.sources))
        return commit_upper(store, upper, job.source_date_epoch)
    finally:
        store.rm_rf(tmp)
