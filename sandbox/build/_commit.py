"""Inside the user namespace: a step's writable layer becomes a layer blob and a layer dir.

``commit_upper`` runs in the user namespace the containers use (``run_in_userns``), so files
owned by the subordinate range can be read, and the layer is unpacked into
``layers/<chain-id>`` the way pulled layers are. ``overlay_view`` mounts a writable overlay of
layer dirs for COPY/ADD (buildah copies into a mounted container the same way).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sandbox import _syscalls as sc
from sandbox import layers
from sandbox._overlay_tree import DIR_FLAGS, is_opaque, merged_lookup
from sandbox.store import Store

__all__ = ["LayerResult", "commit_upper", "overlay_view", "private_mounts",
           "RUNTIME_ARTIFACTS"]

# What the runtime creates in a container's rootfs to mount over (plan.py): removed from a
# RUN step's upper dir when the image did not have them and they are still empty.
RUNTIME_ARTIFACTS = ("etc/hosts", "etc/hostname", "etc/resolv.conf", "etc", "proc", "sys",
                     "dev")


@dataclass(frozen=True)
class LayerResult:
    diff_id: str
    digest: str
    size: int
    media_type: str

    def descriptor(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


def private_mounts() -> None:
    """Keep our mounts in this (fresh) mount namespace."""
    sc.mount(None, "/", None, sc.MS_PRIVATE | sc.MS_REC)


@contextlib.contextmanager
def overlay_view(tmp: str, lowers: Sequence[str], name: str, driver: str = "overlay"
                 ) -> Iterator[tuple[str, str]]:
    """Mount an overlay of ``lowers`` (top first) with a fresh upper under ``tmp``: kernel
    overlayfs, or ``fuse_overlay`` for the ``fuse`` driver. Yields (mount point, upper dir)
    and unmounts."""
    upper, work, mnt = (os.path.join(tmp, f"{name}.{d}") for d in ("upper", "work", "mnt"))
    for d in (upper, work, mnt):
        os.mkdir(d, 0o755)
    if not lowers:
        empty = os.path.join(tmp, f"{name}.empty")
        os.mkdir(empty, 0o755)
        lowers = [empty]
    if driver == "fuse":
        from sandbox.drivers.fuse import mount_fuse, unmount_fuse

        pid = mount_fuse(lowers, mnt, upper, work)
        try:
            yield mnt, upper
        finally:
            unmount_fuse(mnt, pid)
        return
    from sandbox.runtime.plan import overlay_options

    sc.mount("overlay", mnt, "overlay", 0, overlay_options(tuple(lowers), upper, work))
    try:
        yield mnt, upper
    finally:
        sc.umount2(mnt, sc.MNT_DETACH)


def remove_artifacts(upper: str, lowers: Sequence[str], extra: Sequence[str] = ()) -> None:
    """Drop the mount points the runtime created in ``upper`` (deepest first), then the
    directories copied up only to hold them."""
    lower_paths = [Path(os.path.abspath(p)) for p in lowers]
    parents: set[str] = set()
    for rel in (*extra, *RUNTIME_ARTIFACTS):
        rel = rel.strip("/")
        path = os.path.join(upper, rel)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if merged_lookup(lower_paths, rel) is not None:
            continue
        with contextlib.suppress(OSError):
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(path)  # only when empty
            elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
                os.unlink(path)
            parents.add(os.path.dirname(rel))
    for rel in sorted(parents, key=len, reverse=True):
        _drop_plain_copy_up(upper, lower_paths, rel)


def _drop_plain_copy_up(upper: str, lower_paths: list[Path], rel: str) -> None:
    """Remove the upper dir ``rel`` if it is empty, not opaque and as the lower has it."""
    if not rel:
        return
    path = os.path.join(upper, rel)
    below = merged_lookup(lower_paths, rel)
    try:
        st = os.lstat(path)
        if below is None or os.listdir(path) or not stat.S_ISDIR(st.st_mode):
            return
        fd = os.open(path, DIR_FLAGS)
        try:
            if is_opaque(fd):
                return
        finally:
            os.close(fd)
        if (st.st_mode, st.st_uid, st.st_gid) == (below.st_mode, below.st_uid, below.st_gid):
            os.rmdir(path)
    except OSError:
        return


def _is_empty(upper: str) -> bool:
    return not os.listdir(upper)


def commit_upper(store: Store, upper: str, source_date_epoch: int | None
                 ) -> LayerResult | None:
    """Write ``upper`` as a gzip layer blob; None when ``upper`` is empty (an ``empty_layer``
    step). The layer dir is unpacked from the blob when a later step stacks it
    (``ImageStore.layer_dirs``), as for a pulled image."""
    if _is_empty(upper):
        return None
    fd, blob_tmp = store.mkstemp(suffix=".blob")
    try:
        with os.fdopen(fd, "wb") as out:
            digests = layers.write_layer(upper, out, compression="gzip",
                                         source_date_epoch=source_date_epoch)
        os.chmod(blob_tmp, 0o644)
        os.replace(blob_tmp, store.blob_path(digests.digest))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(blob_tmp)
        raise
    return LayerResult(digests.diff_id, digests.digest, digests.size, digests.media_type)

