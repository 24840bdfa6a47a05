"""The build context: where COPY/ADD sources come from, what they are, and their content hash.

Sources are resolved on the host side (the context belongs to the user): paths are cleaned and
must stay inside the context (``COPY ../x`` is refused), symlinks are followed only inside it,
``.dockerignore``d paths do not exist, and globs match one path component per ``*``. The result
is an explicit list of entries per source, so the copy inside the user namespace needs no
matcher, and the cache key hashes exactly what will be copied (Docker's tarsum: names, modes,
sizes, link targets and content; not times).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import os
import posixpath
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

from sandbox._paths import resolve_in_root
from sandbox.build.dockerignore import Matcher, clean_path
from sandbox.errors import BuildError

__all__ = ["BuildContext", "Source", "exclude", "extract_context_tar", "has_glob", "hash_source"]

_GLOB_CHARS = frozenset("*?[")


def has_glob(path: str) -> bool:
    return any(c in _GLOB_CHARS for c in path)


@dataclass(frozen=True)
class Source:
    """One resolved COPY/ADD source on the host."""

    name: str
    """Its base name (the file name a single file gets under a directory destination)."""
    path: str
    """Absolute host path (symlinks resolved inside the context)."""
    is_dir: bool
    entries: tuple[str, ...] = ()
    """For a directory: the relative paths copied, parents first (ignored ones left out)."""
    mode: int | None = None
    """Forced mode (ADD of a URL: 0600)."""
    mtime: float | None = None
    remote: bool = False
    """Downloaded by ADD from a URL: not extracted unless ``ADD --unpack=true``."""


class BuildContext:
    """A context directory and its ignore rules."""

    def __init__(self, root: str, matcher: Matcher) -> None:
        self.root = os.path.abspath(root)
        self.matcher = matcher

    def _clean(self, pattern: str, keyword: str) -> str:
        rel = clean_path(pattern.lstrip("/") or ".")
        if rel == ".." or rel.startswith("../"):
            raise BuildError(f"{keyword} failed: forbidden path outside the build context: "
                             f"{pattern}", hint="sources must be inside the context directory")
        return rel

    def resolve(self, pattern: str, keyword: str = "COPY") -> list[Source]:
        """The sources ``pattern`` names; a `BuildError` when there are none."""
        rel = self._clean(pattern, keyword)
        rels = self._glob(rel) if has_glob(rel) else [rel]
        out: list[Source] = []
        for item in rels:
            excluded = item != "." and self.matcher.matches(item)
            if excluded and not self.matcher.has_exclusions:
                continue
            host = resolve_in_root(self.root, item)
            try:
                st = os.stat(host)
            except (FileNotFoundError, NotADirectoryError):
                continue
            name = posixpath.basename(item) if item != "." else ""
            if stat.S_ISDIR(st.st_mode):
                entries = tuple(self._entries(host))
                if not excluded or entries:  # an excluded dir with re-included children
                    out.append(Source(name, host, True, entries))
            elif not excluded:
                out.append(Source(name, host, False))
        if not out:
            if has_glob(rel):
                raise BuildError(f"{keyword} failed: no source files were specified "
                                 f"(nothing matches {pattern})")
            raise BuildError(f"{keyword} failed: file not found in build context or excluded "
                             f"by .dockerignore: stat {pattern}: file does not exist",
                             hint="check the path (it is relative to the context directory)")
        return out

    def _glob(self, rel: str) -> list[str]:
        found = [""]
        for part in rel.split("/"):
            nxt: list[str] = []
            for base in found:
                directory = os.path.join(self.root, base) if base else self.root
                if not has_glob(part):
                    nxt.append(f"{base}/{part}" if base else part)
                    continue
                try:
                    names = sorted(os.listdir(directory))
                except (NotADirectoryError, FileNotFoundError):
                    continue
                nxt += [f"{base}/{n}" if base else n for n in names
                        if fnmatch.fnmatchcase(n, part) and not (n.startswith(".")
                                                                 and not part.startswith("."))]
            found = nxt
        return [f for f in found if os.path.lexists(os.path.join(self.root, f))]

    def _entries(self, host_dir: str, rel: str = "") -> Iterator[str]:
        """Entries below a source directory, pre-order in name order, ignore rules applied
        (an excluded directory is still walked when a ``!`` pattern may re-include a child)."""
        base = os.path.relpath(host_dir, self.root)
        prefix = "" if base == "." else base + "/"
        with os.scandir(os.path.join(host_dir, rel) if rel else host_dir) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            path = f"{rel}/{entry.name}" if rel else entry.name
            excluded = self.matcher.matches(prefix + path)
            if not excluded:
                yield path
            if entry.is_dir(follow_symlinks=False) and (not excluded
                                                        or self.matcher.has_exclusions):
                yield from self._entries(host_dir, path)


def exclude(sources: list[Source], patterns: tuple[str, ...] | list[str]) -> list[Source]:
    """``COPY --exclude``: patterns match paths below a source directory, or a file's name."""
    matcher = Matcher(patterns)
    out = []
    for source in sources:
        if not source.is_dir:
            if not matcher.matches(source.name):
                out.append(source)
            continue
        kept = tuple(e for e in source.entries if not matcher.matches(e))
        out.append(dataclasses.replace(source, entries=kept))
    return out


def hash_source(h: hashlib._Hash, source: Source) -> None:
    """Feed what a COPY of ``source`` depends on into ``h``."""
    h.update(f"\0source {source.name} {source.is_dir} {source.mode}"
             f"{' remote' if source.remote else ''}\0".encode())
    if not source.is_dir:
        _hash_file(h, source.path)
        return
    for rel in source.entries:
        h.update(rel.encode("utf-8", "surrogateescape") + b"\0")
        _hash_file(h, os.path.join(source.path, rel))


def _hash_file(h: hashlib._Hash, path: str) -> None:
    st = os.lstat(path)
    h.update(f"{stat.S_IFMT(st.st_mode):o} {stat.S_IMODE(st.st_mode):o} {st.st_size}\0".encode())
    if stat.S_ISLNK(st.st_mode):
        h.update(os.fsencode(os.readlink(path)))
    elif stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    elif stat.S_ISDIR(st.st_mode):
        pass
    h.update(b"\0")


def extract_context_tar(fileobj: tarfile.TarFile, dest: str) -> None:
    """Unpack a context tar (``sandbox build - < ctx.tar``) into the empty ``dest``, refusing
    members that would leave it; ownership is not kept (the files are the user's)."""
    for member in fileobj:
        name = clean_path(member.name.lstrip("/"))
        if name in (".", "") or name == ".." or name.startswith("../"):
            continue
        target = resolve_in_root(dest, name, follow_last=False)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if member.isdir():
            os.makedirs(target, exist_ok=True)
            os.chmod(target, (member.mode & 0o7777) | 0o700)
        elif member.issym():
            os.symlink(member.linkname, target)
        elif member.islnk():
            link = resolve_in_root(dest, clean_path(member.linkname.lstrip("/")),
                                   follow_last=False)
            if os.path.isfile(link):
                os.link(link, target)
        elif member.isreg():
            src = fileobj.extractfile(member)
            assert src is not None
            with open(target, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            os.chmod(target, (member.mode & 0o777) | 0o600)
            os.utime(target, (member.mtime, member.mtime))
