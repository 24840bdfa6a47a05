"""Layer unpacking for ``ImageStore``, run inside the user namespace.

Module-level functions (picklable for the spawned helper). Each layer is unpacked into a temp
dir under ``tmp/`` (named with the creating pid, so ``clean_tmp`` can tell a dead process's
leftovers), verified against its diff id while it streams, and renamed to ``layers/<chain>``;
on any error the temp dir is removed, so no half layer is ever visible. Several layers are
unpacked by forked children at once: creating files waits on the disk, not on the CPU.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from typing import Any, BinaryIO

from sandbox.errors import DigestMismatch, SandboxError
from sandbox.store import Store

__all__ = ["unpack_layers", "import_layer", "remove_dirs", "finish_layer"]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _owner_policy() -> str:
    """Inside the user namespace: real chown when it maps more than one id, else the
    ``override_stat`` xattr. (Asking ``detect_mapping`` here would be wrong: inside, we are
    uid 0 and have no subordinate ranges of our own.)"""
    from sandbox.runtime.idmap import mapped_id_count

    return "chown" if mapped_id_count() > 1 else "xattr"


def finish_layer(store: Store, tmp: str, chain_id: str, diff_id: str, parent: str | None,
                  stats: Any) -> None:
    meta = {"chain_id": chain_id, "diff_id": diff_id, "parent": parent,
            "created": _now(), "size": int(getattr(stats, "bytes", 0) or 0),
            "stats": getattr(stats, "__dict__", None) or str(stats)}
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f)
    try:
        os.rename(tmp, store.layer_dir(chain_id))
    except OSError:
        if store.has_layer(chain_id):  # another process won the race: same content
            store.rm_rf(tmp)
        else:
            raise


class _HashingReader:
    """Hashes what is read through it (the uncompressed layer, for its diff id)."""

    def __init__(self, raw: BinaryIO, algo: str = "sha256") -> None:
        self.raw = raw
        self.algo = algo
        self.hash = hashlib.new(algo)

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.hash.update(data)
        return data

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def drain(self) -> str:
        while self.read(1 << 20):
            pass
        return f"{self.algo}:" + self.hash.hexdigest()


def _unpack_one(store: Store, digest: str, diff_id: str, dest: str, owners: str) -> Any:
    from sandbox import layers

    with store.open_blob(digest) as f:
        raw = layers.open_decompressed(f)
        try:
            hashed = _HashingReader(raw, diff_id.partition(":")[0] or "sha256")
            stats = layers.unpack_layer(hashed, dest, owners=owners)  # type: ignore[arg-type]
            actual = hashed.drain()
        finally:
            raw.close()
    if actual != diff_id:
        raise DigestMismatch(f"layer {digest[7:19]} unpacks to {actual}, but the image "
                             f"config says {diff_id}", hint="the image is corrupt; remove it "
                                                            "and pull it again")
    return stats


_UNPACK_PARALLEL = 6  # layers unpacked at once: file creation waits on the disk, not the CPU


def _unpack_locked(store: Store, owners: str, chain_id: str, digest: str, diff_id: str,
                   parent: str | None) -> None:
    with store.lock(f"layer-{chain_id[7:]}"):
        if store.has_layer(chain_id):
            return
        tmp = store.mkdtemp(suffix=".layer")
        try:
            os.mkdir(os.path.join(tmp, "diff"), 0o755)
            stats = _unpack_one(store, digest, diff_id, os.path.join(tmp, "diff"), owners)
            finish_layer(store, tmp, chain_id, diff_id, parent, stats)
        except BaseException:
            store.rm_rf(tmp)
            raise


def unpack_layers(root: str, todo: list[tuple[str, str, str, str | None]]) -> None:
    """Unpack layers (already inside the user namespace), each in a forked child when there
    are several: creating files is latency-bound, and layers are independent directories."""
    store = Store(root).ensure()
    owners = _owner_policy()
    if len(todo) == 1:
        _unpack_locked(store, owners, *todo[0])
        return
    _in_children([functools.partial(_unpack_locked, store, owners, *item) for item in todo],
                 _UNPACK_PARALLEL)


def _in_children(tasks: list[Any], limit: int) -> None:
    """Run each task in a forked child, ``limit`` at a time; re-raise the first failure."""
    import pickle

    pending = list(tasks)
    running: dict[int, int] = {}
    errors: list[BaseException] = []
    try:
        while pending or running:
            while pending and len(running) < limit and not errors:
                task = pending.pop(0)
                r, w = os.pipe()
                pid = os.fork()
                if pid == 0:  # pragma: no cover - the child
                    os.close(r)
                    code, payload = 0, b""
                    try:
                        task()
                    except BaseException as exc:  # noqa: BLE001 - sent to the parent
                        code = 1
                        try:
                            payload = pickle.dumps(exc)
                        except Exception:  # noqa: BLE001
                            payload = pickle.dumps(SandboxError(str(exc)))
                    os.write(w, payload)
                    os._exit(code)
                os.close(w)
                running[pid] = r
            if not running:
                break
            pid, status = os.wait()
            r = running.pop(pid, -1)
            if r < 0:
                continue
            data = _read_fd(r)
            if data:
                errors.append(pickle.loads(data))
            elif status:
                errors.append(SandboxError("a layer unpack process died",
                                           hint="see the kernel log; pull again"))
    finally:
        for pid, r in running.items():
            os.waitpid(pid, 0)
            os.close(r)
    if errors:
        raise errors[0]


def _read_fd(fd: int) -> bytes:
    chunks = []
    try:
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def import_layer(root: str, src: str) -> tuple[str, str, int, str]:
    from sandbox import layers

    store = Store(root).ensure()
    tmp = store.mkdtemp(suffix=".layer")
    fd, blob_tmp = store.mkstemp(suffix=".blob")
    try:
        diff = os.path.join(tmp, "diff")
        os.mkdir(diff, 0o755)
        stats = layers.import_rootfs(src, diff, owners=_owner_policy())  # type: ignore[arg-type]
        with os.fdopen(fd, "wb") as out:
            digests = layers.write_layer(diff, out, compression="gzip")
        os.chmod(blob_tmp, 0o644)
        os.replace(blob_tmp, store.blob_path(digests.digest))
        chain_id = digests.diff_id
        with store.lock(f"layer-{chain_id[7:]}"):
            if store.has_layer(chain_id):
                store.rm_rf(tmp)
            else:
                finish_layer(store, tmp, chain_id, digests.diff_id, None, stats)
        return digests.diff_id, digests.digest, digests.size, digests.media_type
    except BaseException:
        store.rm_rf(tmp)
        if os.path.exists(blob_tmp):
            os.unlink(blob_tmp)
        raise


def remove_dirs(root: str, paths: list[str]) -> None:
    store = Store(root)
    for path in paths:
        store.rm_rf(path)
