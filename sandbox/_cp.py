"""``cp`` and ``export``: tar streams between the host and a container's root, Docker's rules.

The container half (``container_side``) runs chrooted in the container's root (see
``sandbox._nsexec``), so any symlink it meets resolves inside the container. The host half
extracts with ``safe_extract``: member names are relative and clean, no member is written
through a symlink (an existing one at the target is replaced, never followed), hard links stay
inside the destination, devices are skipped.

Docker's naming rules (``docker cp --help``), applied by ``placement`` on whichever side owns the
destination: a file goes into an existing directory under its own name, else to the path given
(whose parent must exist; a trailing ``/`` demands a directory); a directory is copied into an
existing directory under its own name (``SRC/.``: its contents), else created at the path given;
a directory never replaces a file.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tarfile
from typing import IO, Any

__all__ = ["container_side", "placement", "safe_extract", "add_to_tar", "CpError"]


class CpError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def placement(*, src_is_dir: bool, contents_only: bool, dest: str) -> tuple[str, str | None]:
    """(directory to extract into, new name for the tar's top entry or None) for ``dest``."""
    trailing = dest.endswith("/") or dest.endswith("/.")
    if os.path.isdir(dest):
        return dest, None
    if os.path.lexists(dest) and src_is_dir:
        raise CpError(f"cannot copy a directory to a file: {dest}")
    norm = os.path.normpath(dest)
    parent = os.path.dirname(norm) or "."
    if not os.path.isdir(parent):
        raise CpError(f"no such directory: {parent}")
    if not src_is_dir and trailing:
        raise CpError(f"destination directory {dest} must exist")
    if contents_only:
        os.mkdir(norm, 0o755)
        return norm, None
    return parent, os.path.basename(norm)


# -- tar writing ------------------------------------------------------------------------------

def _mounts_below(root: str) -> set[str]:
    out: set[str] = set()
    # PID 1 of the container: the helper itself is not in the container's PID namespace
    for path in ("/proc/1/mountinfo", "/proc/self/mountinfo"):
        try:
            with open(path) as f:
                for line in f:
                    mp = line.split(" ")[4].replace("\\040", " ")
                    if mp != "/":
                        out.add(mp)
            break
        except OSError:
            continue
    return out


class _Exact:
    """A file read as exactly ``size`` bytes (zero-padded or cut if it changed meanwhile)."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        self.f, self.left = f, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n) if n else b""
        data += b"\0" * (n - len(data))
        self.left -= len(data)
        return data


def add_to_tar(tar: tarfile.TarFile, path: str, arcname: str, *, owner_root: bool = False,
               skip: set[str] | None = None) -> None:
    """``path`` as ``arcname`` (recursively, symlinks as links); mount points in ``skip``
    appear as empty directories."""
    skip = skip or set()

    def add(p: str, name: str) -> None:
        try:
            info = tar.gettarinfo(p, arcname=name)
        except OSError:
            return
        if owner_root:
            info.uid = info.gid = 0
            info.uname = info.gname = ""
        if info.isreg():
            try:
                f = open(p, "rb")
            except OSError:
                return
            with f:
                tar.addfile(info, _Exact(f, info.size))
            return
        if info.ischr() or info.isblk():
            if not (info.devmajor == 0 and info.devminor == 0):
                return
        tar.addfile(info)
        if info.isdir() and p not in skip:
            try:
                names = sorted(os.listdir(p))
            except OSError:
                return
            for child in names:
                add(os.path.join(p, child), f"{name}/{child}" if name != "." else child)

    add(path, arcname)


class _StdoutTar:
    """A streaming tar on fd 1, flushed on exit (the helper ends with ``os._exit``)."""

    def __enter__(self) -> tarfile.TarFile:
        self.out = os.fdopen(1, "wb", closefd=False)
        self.tar = tarfile.open(fileobj=self.out, mode="w|", format=tarfile.PAX_FORMAT)
        return self.tar

    def __exit__(self, *exc: object) -> None:
        self.tar.close()
        self.out.flush()


def _stdout_tar() -> _StdoutTar:
    return _StdoutTar()


def _cp_out(req: dict[str, Any]) -> None:
    path = req["path"]
    contents_only = path.endswith("/.")
    try:
        st = os.stat(path) if req.get("follow") else os.lstat(path)
    except FileNotFoundError:
        raise CpError(f"could not find the file {path} in container {req['name']}") from None
    except NotADirectoryError:
        raise CpError(f"not a directory: {path}") from None
    is_dir = stat.S_ISDIR(st.st_mode)
    if path.endswith("/") and not is_dir:
        raise CpError(f"not a directory: {path}")
    real = os.path.realpath(path) if req.get("follow") else os.path.normpath(path)
    base = os.path.basename(os.path.normpath(path)) or "/"
    kind = "dir" if is_dir else "symlink" if stat.S_ISLNK(st.st_mode) else "file"
    os.write(1, json.dumps({"ok": True, "type": kind, "base": base,
                            "contents_only": contents_only and is_dir}).encode() + b"\n")
    skip = _mounts_below("/") - {real}
    skip = {m for m in skip if m.startswith(("/proc", "/sys", "/dev"))} | (
        skip if real == "/" else set())
    with _stdout_tar() as tar:
        if contents_only and is_dir:
            for child in sorted(os.listdir(real)):
                add_to_tar(tar, os.path.join(real, child), child, skip=skip)
        else:
            add_to_tar(tar, real, base if base != "/" else ".", skip=skip)


def _cp_in(req: dict[str, Any]) -> None:
    dest = req["path"]
    if req.get("raw"):
        if not os.path.isdir(dest):
            raise CpError(f"destination {dest} must be a directory when the source is -")
        into, rename = dest, None
    else:
        into, rename = placement(src_is_dir=req["src_is_dir"],
                                 contents_only=req["contents_only"], dest=dest)
    with tarfile.open(fileobj=os.fdopen(0, "rb", closefd=False), mode="r|") as tar:
        safe_extract(tar, into, rename_top=(req["src_base"], rename) if rename else None,
                     chown=True)


def _export(req: dict[str, Any]) -> None:
    skip = _mounts_below("/")
    with _stdout_tar() as tar:
        for child in sorted(os.listdir("/")):
            add_to_tar(tar, "/" + child, child, skip=skip)


def container_side(req: dict[str, Any]) -> int:
    """Run ``req['op']`` chrooted in the container; errors go to stderr with Docker's code."""
    try:
        {"cp_out": _cp_out, "cp_in": _cp_in, "export": _export}[req["op"]](req)
    except CpError as exc:
        sys.stderr.write(f"sandbox: {exc.message}\n")
        return exc.code
    except (OSError, tarfile.TarError) as exc:
        sys.stderr.write(f"sandbox: {getattr(exc, 'strerror', None) or exc}\n")
        return 1
    return 0


# -- safe extraction --------------------------------------------------------------------------

def _clean(name: str) -> list[str] | None:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts:
        return None
    return parts


def _no_symlink_parents(root: str, parts: list[str]) -> bool:
    cur = root
    for part in parts[:-1]:
        cur = os.path.join(cur, part)
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            return True
        if not stat.S_ISDIR(st.st_mode):
            return False
    return True


def safe_extract(tar: tarfile.TarFile, dest: str, *, rename_top: tuple[str, str] | None = None,
                 chown: bool = False) -> int:
    """Extract a tar stream under ``dest`` without following any symlink; returns the count."""
    count = 0
    dirs: list[tuple[str, tarfile.TarInfo]] = []
    for member in tar:
        parts = _clean(member.name)
        if parts is None:
            continue
        if rename_top is not None and parts and parts[0] == rename_top[0]:
            parts[0] = rename_top[1]
        if not parts:
            continue
        if member.ischr() or member.isblk():
            continue
        if not _no_symlink_parents(dest, parts):
            continue
        target = os.path.join(dest, *parts)
        if member.islnk():
            lparts = _clean(member.linkname)
            if lparts is None:
                continue
            if rename_top is not None and lparts and lparts[0] == rename_top[0]:
                lparts[0] = rename_top[1]
            if not _no_symlink_parents(dest, lparts + ["x"]):
                continue
            member.linkname = "/".join(lparts)
        _clear(target, member)
        member.name = "/".join(parts)
        if not chown:
            member.uid, member.gid = os.getuid(), os.getgid()
        if member.isdir():
            os.makedirs(target, exist_ok=True)
            dirs.append((target, member))
            count += 1
            continue
        if member.islnk():
            os.link(os.path.join(dest, member.linkname), target)
        else:
            tar.extract(member, dest, set_attrs=not member.issym(), numeric_owner=True)
        count += 1
    for target, member in reversed(dirs):
        try:
            if chown:
                os.lchown(target, member.uid, member.gid)
            os.chmod(target, member.mode & 0o7777 | 0o200 if not chown else member.mode & 0o7777)
            os.utime(target, (member.mtime, member.mtime))
        except OSError:
            pass
    return count


def _clear(target: str, member: tarfile.TarInfo) -> None:
    """Remove what is at ``target`` unless both are directories (never write through a link)."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        if member.isdir():
            return
        import shutil

        shutil.rmtree(target)
    else:
        os.unlink(target)


def read_header(stream: IO[bytes]) -> dict[str, Any]:
    line = stream.readline()
    if not line:
        return {}
    try:
        data: dict[str, Any] = json.loads(line)
        return data
    except ValueError:
        return {}
