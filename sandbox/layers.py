"""Layers: safe unpacking into the overlay on-disk format, and the way back to an OCI layer tar.

Pure functions with no namespace code: the engine calls them inside its user namespace, so that
``owners="chown"`` gives files the image's real owners through the subuid map.

On-disk format of an unpacked layer or an upper dir (DESIGN.md decision 3), read by every
storage driver, by ``diff``, ``commit`` and ``build``:

* a whiteout is a character device 0:0 named like the hidden entry (a ``.wh.NAME`` empty file
  where ``mknod`` is refused);
* an opaque directory has ``user.overlay.opaque=y`` (kernel overlayfs with ``userxattr``), or
  contains a ``.wh..wh..opq`` file where user xattrs are refused;
* an owner or mode that could not be applied is kept in ``user.containers.override_stat``
  (``uid:gid:0mode:type``, the containers/storage format fuse-overlayfs reads; fuse-overlayfs
  reads it only if the layer's root dir carries one too, so the root always gets one then).

Storage drivers must mount kernel overlayfs with ``redirect_dir=off`` and without ``metacopy``
so that upper dirs stay self-contained and ``write_layer`` can turn them into tars.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from sandbox._layer_codec import GZIP_BACKEND, DigestingWriter, open_decompressed
from sandbox._overlay_tree import (
    DIR_FLAGS,
    TreeCopier,
    is_opaque,
    merged_children,
    merged_lookup,
    read_override,
    walk,
    whiteout_target,
)
from sandbox._tarsafe import OPAQUE_MARKER, WHITEOUT_PREFIX, DirTree, layer_filter
from sandbox._unpack import (
    OPAQUE_XATTR,
    OVERRIDE_XATTR,
    OwnerPolicy,
    UnpackStats,
    format_override,
    is_ignored_xattr,
    unpack_stream,
)

__all__ = [
    "OwnerPolicy",
    "StrPath",
    "UnpackStats",
    "LayerDigests",
    "MEDIA_TYPES",
    "GZIP_BACKEND",
    "open_decompressed",
    "unpack_layer",
    "import_rootfs",
    "write_layer",
    "diff_upper",
    "flatten_layers",
    "layer_filter",
    # overlay-format helpers for build/commit/cp (import them from here, not the _private ones)
    "OVERRIDE_XATTR",
    "OPAQUE_XATTR",
    "format_override",
    "read_override",
    "is_opaque",
    "whiteout_target",
    "merged_lookup",
    "merged_children",
]

logger = logging.getLogger(__name__)

StrPath = str | os.PathLike[str]
MEDIA_TYPES: dict[str | None, str] = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    None: "application/vnd.oci.image.layer.v1.tar",
}
_ROOTFS_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.zstd", ".tar.xz", ".tar.bz2")
_SKIPPED_XATTR_PREFIXES = ("security.selinux", "system.")


@dataclass(frozen=True)
class LayerDigests:
    """What a written layer is known by: ``diff_id`` (uncompressed) and ``digest`` (the blob)."""

    diff_id: str
    digest: str
    size: int
    media_type: str


def unpack_layer(fileobj: BinaryIO, dest: StrPath, *,
                 owners: OwnerPolicy = "chown") -> UnpackStats:
    """Unpack a (gzip/zstd/plain) layer tar from ``fileobj`` into the empty directory ``dest``.

    Raises an ``UnsafeLayerMember`` subclass for a hostile member; nothing is ever written
    outside ``dest``, but ``dest`` is left half-filled: unpack into a temp dir and remove it on
    error. The stream is read once, forward only.
    """
    stats = unpack_stream(open_decompressed(fileobj), Path(dest), owners)
    logger.info("unpacked layer into %s: %s", dest, stats.summary())
    return stats


def import_rootfs(src: StrPath, dest: StrPath, *,
                  owners: OwnerPolicy = "chown") -> UnpackStats:
    """Fill the empty ``dest`` from a rootfs tarball (any compression) or a directory.

    A directory is copied without following symlinks, keeping hard links, modes, times, owners
    (per ``owners``) and user xattrs; devices and sockets are skipped with a count.
    """
    src = Path(src)
    if src.is_dir():
        return _copy_dir(src, Path(dest), owners)
    if not src.name.endswith(_ROOTFS_SUFFIXES):
        logger.info("importing %s as a tar archive (unrecognised suffix)", src)
    with open(src, "rb") as fileobj:
        return unpack_layer(fileobj, Path(dest), owners=owners)


def _copy_dir(src: Path, dest: Path, owners: OwnerPolicy) -> UnpackStats:
    with DirTree(dest) as tree:
        copier = TreeCopier(tree, overlay_format=False, owners=owners)
        src_fd = os.open(src, DIR_FLAGS)
        try:
            copier.apply(src_fd)
        finally:
            os.close(src_fd)
        copier.finish()
    c = copier.counts
    members = sum(c[k] for k in ("files", "dirs", "symlinks", "hardlinks", "fifos"))
    return UnpackStats(members=members + copier.devices_skipped, files=c["files"],
                       dirs=c["dirs"], symlinks=c["symlinks"], hardlinks=c["hardlinks"],
                       whiteouts=0, opaque_dirs=0, devices_skipped=copier.devices_skipped,
                       bytes=c["bytes"], fifos=c["fifos"])


def flatten_layers(lowers: Sequence[StrPath], dest: StrPath) -> None:
    """Merge overlay-format layers (``lowers`` top-first) into a plain tree in empty ``dest``.

    Whiteouts delete, opaque dirs hide what is below them; the result has no whiteouts and no
    opaque markers (for the ``copy`` storage driver and ``export``).
    """
    with DirTree(Path(dest)) as tree:
        copier = TreeCopier(tree, overlay_format=True)
        for layer in reversed([os.fspath(p) for p in lowers]):
            fd = os.open(layer, DIR_FLAGS)
            try:
                copier.apply(fd)
            finally:
                os.close(fd)
        copier.finish()
    logger.info("flattened %d layers into %s (%d files)", len(lowers), dest,
                copier.counts["files"])


# -- upper dir → layer tar -------------------------------------------------------------------

class _TarWriter:
    """Writes a reproducible PAX tar of an overlay-format tree to a ``DigestingWriter``."""

    def __init__(self, sink: DigestingWriter, source_date_epoch: int | None) -> None:
        self.sink = sink
        self.epoch = source_date_epoch
        self.inodes: dict[tuple[int, int], str] = {}
        self.buf = memoryview(bytearray(1 << 20))
        self.euid, self.egid = os.geteuid(), os.getegid()

    def header(self, name: str, st: os.stat_result, typ: bytes, *, size: int = 0,
               linkname: str = "", xattrs: dict[str, bytes] | None = None,
               owner: tuple[int, int, int] | None = None) -> None:
        info = tarfile.TarInfo(name)
        info.type = typ
        uid, gid, mode = owner if owner is not None else self.owner(st, st.st_mode)
        info.uid, info.gid, info.mode = uid, gid, stat.S_IMODE(mode)
        info.uname = info.gname = ""
        info.size = size
        info.linkname = linkname
        pax: dict[str, str] = {}
        sec, nsec = divmod(st.st_mtime_ns, 1_000_000_000)
        if self.epoch is not None and sec >= self.epoch:
            sec, nsec = self.epoch, 0
        info.mtime = sec
        if nsec:
            pax["mtime"] = f"{sec}.{nsec:09d}".rstrip("0")
        if typ in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        for key in sorted(xattrs or {}):
            pax["SCHILY.xattr." + key] = (xattrs or {})[key].decode("utf-8", "surrogateescape")
        info.pax_headers = dict(sorted(pax.items()))
        self.sink.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def owner(self, st: os.stat_result, mode: int) -> tuple[int, int, int]:
        """Header ids of ``st``: our own uid/gid are the container's root (single-id map)."""
        return (0 if st.st_uid == self.euid else st.st_uid,
                0 if st.st_gid == self.egid else st.st_gid, mode)

    def data(self, fd: int, size: int) -> None:
        left = size
        while left > 0:
            got = os.readv(fd, [self.buf[: min(left, len(self.buf))]])
            if got == 0:  # the file shrank while we read it: keep the announced size
                self.sink.write(bytes(min(left, len(self.buf))))
                left -= min(left, len(self.buf))
                continue
            self.sink.write(self.buf[:got])
            left -= got
        pad = -size % tarfile.BLOCKSIZE
        if pad:
            self.sink.write(bytes(pad))

    def tree(self, root_fd: int) -> None:
        for entry, fd in walk(root_fd):
            if entry.name == OPAQUE_MARKER:
                continue  # emitted right after its directory
            self.entry(entry.dir_fd, entry.name, entry.rel, entry.st, fd)
        self.sink.write(bytes(2 * tarfile.BLOCKSIZE))

    def entry(self, dir_fd: int, name: str, rel: str, st: os.stat_result,
              fd: int | None) -> None:
        mode = st.st_mode
        if stat.S_ISCHR(mode) and st.st_rdev == 0:
            head, _, _ = rel.rpartition("/")
            wh = f"{head}/{WHITEOUT_PREFIX}{name}" if head else WHITEOUT_PREFIX + name
            self.header(wh, st, tarfile.REGTYPE, owner=self.owner(st, 0o600))
        elif fd is not None:
            override = read_override(fd)
            self.header(rel + "/", st, tarfile.DIRTYPE, xattrs=_xattrs(fd), owner=override)
            if is_opaque(fd):
                self.header(f"{rel}/{OPAQUE_MARKER}", st, tarfile.REGTYPE,
                            owner=override or self.owner(st, st.st_mode))
        elif stat.S_ISREG(mode):
            self.regular(dir_fd, name, rel, st)
        elif stat.S_ISLNK(mode):
            self.header(rel, st, tarfile.SYMTYPE, linkname=os.readlink(name, dir_fd=dir_fd))
        elif stat.S_ISFIFO(mode):
            self.header(rel, st, tarfile.FIFOTYPE)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            typ = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            self.header(rel, st, typ)
        else:
            logger.debug("skipping socket %s", rel)

    def regular(self, dir_fd: int, name: str, rel: str, st: os.stat_result) -> None:
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self.inodes:
            self.header(rel, st, tarfile.LNKTYPE, linkname=self.inodes[key])
            return
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                         dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOENT):
                logger.warning("%s changed while it was read; skipped", rel)
                return
            raise
        try:
            fst = os.fstat(fd)
            if not stat.S_ISREG(fst.st_mode):
                logger.warning("%s changed type while it was read; skipped", rel)
                return
            self.header(rel, fst, tarfile.REGTYPE, size=fst.st_size, xattrs=_xattrs(fd),
                        owner=read_override(fd))
            self.data(fd, fst.st_size)
        finally:
            os.close(fd)
        if st.st_nlink > 1:
            self.inodes[key] = rel


def _xattrs(fd: int) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    try:
        names = os.listxattr(fd)
    except OSError:
        return out
    for name in names:
        if is_ignored_xattr(name) or name.startswith(_SKIPPED_XATTR_PREFIXES):
            continue
        try:
            out[name] = os.getxattr(fd, name)
        except OSError:
            continue
    return out


def write_layer(upper: StrPath, out: BinaryIO, *,
                compression: Literal["gzip", "zstd", None] = "gzip",
                source_date_epoch: int | None = None) -> LayerDigests:
    """Write the overlay-format tree ``upper`` to ``out`` as an OCI layer; one pass, streaming.

    Char 0:0 devices become ``.wh.NAME`` entries, opaque dirs a ``.wh..wh..opq`` entry, the
    override xattr becomes the header's uid/gid/mode; hard links inside ``upper`` stay hard
    links. Entries are sorted, uname/gname empty and mtimes clamped to ``source_date_epoch``,
    so identical trees give byte-identical tars (and identical blobs with the same compressor).
    """
    if compression not in MEDIA_TYPES:
        raise ValueError(f"unknown layer compression {compression!r}")
    sink = DigestingWriter(out, compression)
    writer = _TarWriter(sink, source_date_epoch)
    root_fd = os.open(upper, DIR_FLAGS)
    try:
        writer.tree(root_fd)
    finally:
        os.close(root_fd)
    sink.finish()
    diff_id = "sha256:" + sink.diff_hash.hexdigest()
    return LayerDigests(diff_id=diff_id, digest="sha256:" + sink.blob_hash.hexdigest(),
                        size=sink.size, media_type=MEDIA_TYPES[compression])


# -- diff ------------------------------------------------------------------------------------

def diff_upper(upper: StrPath, lowers: Sequence[StrPath]) -> list[tuple[str, str]]:
    """Docker's ``diff`` of a container: ``("A"|"C"|"D", "/path")`` sorted by path.

    An entry of ``upper`` is ``A`` if the merged ``lowers`` (top-first) lack it, else ``C``
    (a directory holding changes is itself ``C``); a whiteout is ``D``; an opaque directory
    deletes ``D`` every lower child it does not itself contain.
    """
    changes: dict[str, str] = {}
    lower_paths = [Path(p) for p in lowers]
    root_fd = os.open(upper, DIR_FLAGS)
    try:
        for entry, fd in walk(root_fd):
            if entry.name == OPAQUE_MARKER or entry.name.startswith(WHITEOUT_PREFIX * 2):
                continue
            target = whiteout_target(entry.name, entry.st)
            if target is not None:
                head = entry.rel.rpartition("/")[0]
                path = f"{head}/{target}" if head else target
                changes["/" + path] = "D"
                continue
            exists = merged_lookup(lower_paths, entry.rel) is not None
            changes["/" + entry.rel] = "C" if exists else "A"
            if fd is not None and exists and is_opaque(fd):
                present = set(os.listdir(fd))
                for child in merged_children(lower_paths, entry.rel) - present:
                    changes[f"/{entry.rel}/{child}"] = "D"
    finally:
        os.close(root_fd)
    return sorted(((kind, path) for path, kind in changes.items()),
                  key=lambda item: os.fsencode(item[1]))

