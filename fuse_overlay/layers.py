"""Pure union logic: top-down lookup and merged readdir over real directories.

A :class:`LayerStack` knows nothing about FUSE.  Layer 0 is the upper (writable) directory when
there is one; the lower directories follow, top first, as in ``lowerdir=top:...:bottom``.
Merged paths are absolute (``/a/b``); real paths are ``layer.root + merged path``.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from dataclasses import dataclass

from fuse_overlay.whiteout import (
    OPAQUE_MARKER,
    WH_PREFIX,
    is_opaque_dir,
    is_whiteout_stat,
    wh_name,
)

logger = logging.getLogger(__name__)

__all__ = ["Layer", "LayerStack", "Node"]


@dataclass(frozen=True, slots=True)
class Layer:
    """One real directory of the union."""

    index: int
    root: str
    writable: bool


@dataclass(slots=True)
class Node:
    """The visible object at a merged path: its top-most real copy and that copy's stat."""

    path: str
    layer: int
    real: str
    st: os.stat_result

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)


def split(path: str) -> tuple[str, str]:
    """Split merged *path* into (parent, name); the parent of ``/a`` is ``/``."""
    parent, _, name = path.rpartition("/")
    return (parent or "/"), name


def _special(entry: os.DirEntry[str]) -> bool:
    """True for devices, fifos and sockets (d_type only, no stat)."""
    return not (
        entry.is_file(follow_symlinks=False)
        or entry.is_dir(follow_symlinks=False)
        or entry.is_symlink()
    )


def _dtype(entry: os.DirEntry[str]) -> int:
    if entry.is_dir(follow_symlinks=False):
        return stat.S_IFDIR
    if entry.is_file(follow_symlinks=False):
        return stat.S_IFREG
    if entry.is_symlink():
        return stat.S_IFLNK
    return 0


def join(parent: str, name: str) -> str:
    return ("" if parent == "/" else parent) + "/" + name


class LayerStack:
    """Top-down lookup over an optional upper directory and one or more lower directories."""

    def __init__(self, lowers: list[str], upper: str | None = None) -> None:
        if not lowers and upper is None:
            raise ValueError("a union needs at least one lower directory or an upper directory")
        roots: list[tuple[str, bool]] = []
        if upper is not None:
            roots.append((upper, True))
        roots.extend((lower, False) for lower in lowers)
        self.layers: tuple[Layer, ...] = tuple(
            Layer(i, os.path.realpath(root).rstrip("/") or "/", writable)
            for i, (root, writable) in enumerate(roots)
        )
        self._roots: tuple[str, ...] = tuple(
            "" if layer.root == "/" else layer.root for layer in self.layers
        )
        self._bottom = len(self.layers) - 1
        self.devs: tuple[int, ...] = tuple(os.stat(layer.root).st_dev for layer in self.layers)
        # merged directory path -> layers (top-down) whose directory contributes to it
        self._dirs: dict[str, tuple[int, ...]] = {}
        self.lock = threading.RLock()

    # -- basic facts -------------------------------------------------------------------------

    @property
    def roots(self) -> tuple[str, ...]:
        """Per layer, the prefix that makes a merged path real (``""`` for a root of ``/``)."""
        return self._roots

    @property
    def upper(self) -> Layer | None:
        return self.layers[0] if self.layers[0].writable else None

    def real(self, layer: int, path: str) -> str:
        """Real path of merged *path* in *layer* (``/`` maps to the layer root)."""
        if path == "/":
            return self.layers[layer].root
        return self._roots[layer] + path

    # -- lookup ------------------------------------------------------------------------------

    def _whited_out(self, layer: int, parent: str, name: str) -> bool:
        """True if a ``.wh.NAME`` file in *layer* hides *name* of lower layers."""
        if layer == self._bottom:
            return False
        return os.path.lexists(self.real(layer, join(parent, wh_name(name))))

    def _probe(self, layers: tuple[int, ...], path: str) -> tuple[int, os.stat_result] | None:
        """First (layer, stat) of *path* among *layers*; None if missing or whited out."""
        parent, name = split(path)
        for li in layers:
            try:
                st = os.lstat(self._roots[li] + path)
            except FileNotFoundError:
                if self._whited_out(li, parent, name):
                    return None
                continue
            except NotADirectoryError:
                return None
            if is_whiteout_stat(st):
                return None
            return li, st
        return None

    def dir_layers(self, path: str) -> tuple[int, ...]:
        """Layers (top-down) contributing to merged directory *path*.

        Raises ``FileNotFoundError`` or ``NotADirectoryError`` like a lookup would.
        """
        cached = self._dirs.get(path)
        if cached is not None:
            return cached
        if path == "/":
            found: list[int] = []
            for li in range(len(self.layers)):
                found.append(li)
                if li != self._bottom and is_opaque_dir(self.layers[li].root):
                    break
            result = tuple(found)
        else:
            parent, name = split(path)
            result = self._collect_dir(self.dir_layers(parent), path, parent, name)
        self._dirs[path] = result
        return result

    def _collect_dir(
        self, parent_layers: tuple[int, ...], path: str, parent: str, name: str
    ) -> tuple[int, ...]:
        found: list[int] = []
        for li in parent_layers:
            real = self._roots[li] + path
            try:
                st = os.lstat(real)
            except FileNotFoundError:
                if self._whited_out(li, parent, name):
                    break
                continue
            if not stat.S_ISDIR(st.st_mode):
                if found or is_whiteout_stat(st):
                    break
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
            found.append(li)
            if li != self._bottom and is_opaque_dir(real):
                break
        if not found:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        return tuple(found)

    def lookup(self, path: str) -> Node | None:
        """The visible object at merged *path*, or None (missing or whited out)."""
        if path == "/":
            li = self.dir_layers("/")[0]
            return Node("/", li, self.layers[li].root, os.lstat(self.layers[li].root))
        parent, name = split(path)
        if name.startswith(WH_PREFIX):
            return None
        try:
            parent_layers = self.dir_layers(parent)
        except (FileNotFoundError, NotADirectoryError):
            return None
        hit = self._probe(parent_layers, path)
        if hit is None:
            return None
        li, st = hit
        return Node(path, li, self._roots[li] + path, st)

    def resolve(self, path: str) -> Node:
        """Like :meth:`lookup` but raises ``FileNotFoundError`` for a missing object."""
        node = self.lookup(path)
        if node is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        return node

    def lower_has(self, path: str, below: int = 0) -> bool:
        """True if a layer under *below* makes merged *path* visible (a whiteout is needed).

        Only layers that contribute to the parent directory count.
        """
        if path == "/":
            return False
        parent, name = split(path)
        try:
            parent_layers = self.dir_layers(parent)
        except (FileNotFoundError, NotADirectoryError):
            return False
        lowers = tuple(li for li in parent_layers if li > below)
        if not lowers:
            return False
        # a whiteout in `below` itself must not hide the lower object from this question
        return self._probe(lowers, path) is not None

    def upper_has_dir(self, path: str) -> bool:
        """True if the upper layer already holds merged directory *path* (cache, then lstat)."""
        cached = self._dirs.get(path)
        if cached is not None:
            return cached[0] == 0 and self.layers[0].writable
        try:
            return stat.S_ISDIR(os.lstat(self.real(0, path)).st_mode)
        except OSError:
            return False

    def probe_new(self, path: str) -> tuple[bool, bool, bool]:
        """Facts for creating merged *path*: (exists, upper holds a whiteout, a lower layer has it).

        Raises like :meth:`dir_layers` when the parent is missing.
        """
        parent, name = split(path)
        layers = self.dir_layers(parent)
        whiteout = False
        rest = layers
        if layers[0] == 0 and self.layers[0].writable:
            rest = layers[1:]
            try:
                st = os.lstat(self._roots[0] + path)
            except FileNotFoundError:
                whiteout = self._whited_out(0, parent, name)
            else:
                if not is_whiteout_stat(st):
                    return True, False, True
                whiteout = True
        lower = self._probe(rest, path) is not None if rest else False
        if lower and not whiteout:
            return True, False, True
        return False, whiteout, lower

    # -- readdir -----------------------------------------------------------------------------

    def list_dir(self, path: str) -> list[str]:
        """Merged entries of directory *path*: no duplicates, no whiteouts, no markers."""
        return [entry[0] for entry in self.list_dir_entries(path)]

    def list_dir_entries(self, path: str) -> list[tuple[str, int, int, int]]:
        """Like :meth:`list_dir` with (name, layer, real d_ino, S_IFMT type or 0) per entry."""
        names: list[tuple[str, int, int, int]] = []
        seen: set[str] = set()
        hidden: set[str] = set()
        for li in self.dir_layers(path):
            new_hidden: list[str] = []
            with os.scandir(self.real(li, path)) as entries:
                for entry in entries:
                    name = entry.name
                    if name.startswith(WH_PREFIX):
                        if name != OPAQUE_MARKER:
                            new_hidden.append(name[len(WH_PREFIX) :])
                        continue
                    if name in seen or name in hidden:
                        continue
                    if _special(entry) and is_whiteout_stat(entry.stat(follow_symlinks=False)):
                        new_hidden.append(name)
                        continue
                    seen.add(name)
                    names.append((name, li, entry.inode(), _dtype(entry)))
            hidden.update(new_hidden)
        return names

    def is_empty_dir(self, path: str) -> bool:
        return not self.list_dir(path)

    # -- cache maintenance -------------------------------------------------------------------

    def forget(self, path: str) -> None:
        """Drop cached directory facts for *path* and everything below it."""
        self._dirs.pop(path, None)
        prefix = path + "/" if path != "/" else "/"
        if path == "/":
            self._dirs.clear()
            return
        stale = [key for key in list(self._dirs) if key.startswith(prefix)]
        for key in stale:
            del self._dirs[key]

    def set_dir_layers(self, path: str, layers: tuple[int, ...]) -> None:
        """Record facts a mutation already knows (a new upper-only directory)."""
        self._dirs[path] = layers
