"""Images in the store: lookup, import, listing, removal and layer unpacking.

Image records live in the OCI layout's ``index.json``: one manifest descriptor per name, with the
name in ``org.opencontainers.image.ref.name`` (untagged images keep a descriptor without one).
Layers are unpacked once, by chain id, inside the user namespace the containers use.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sandbox.errors import ImageNotFound, SandboxError, StoreError
from sandbox.store import Store

__all__ = ["Image", "ImageStore", "HOST_IMAGE", "REF_ANNOTATION", "chain_ids", "host_arch",
           "DEFAULT_PATH"]

REF_ANNOTATION = "org.opencontainers.image.ref.name"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_GZIP_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_IMAGE = "host"
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
         "s390x": "s390x", "riscv64": "riscv64", "i686": "386"}


def host_arch() -> str:
    machine = platform.machine()
    return _ARCH.get(machine, machine)


def chain_ids(diff_ids: list[str]) -> list[str]:
    """OCI chain ids: ChainID(n) = sha256(ChainID(n-1) + " " + DiffID(n))."""
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class Image:
    """An image as the engine needs it."""

    id: str                       # the config digest, as Docker's image id
    manifest_digest: str
    names: tuple[str, ...]
    config: dict[str, Any] = field(hash=False, compare=False)
    layers: tuple[dict[str, Any], ...] = field(hash=False, compare=False, default=())
    builtin: bool = False

    @property
    def diff_ids(self) -> list[str]:
        return list(self.config.get("rootfs", {}).get("diff_ids", []))

    @property
    def chain_ids(self) -> list[str]:
        return chain_ids(self.diff_ids)

    @property
    def run_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = self.config.get("config") or {}
        return cfg

    @property
    def created(self) -> str:
        return str(self.config.get("created", ""))

    @property
    def size(self) -> int:
        return sum(int(layer.get("size", 0)) for layer in self.layers)


def _host_image() -> Image:
    return Image(id="host", manifest_digest="", names=(HOST_IMAGE,), builtin=True,
                 config={"os": "linux", "architecture": host_arch(),
                         "config": {"Env": [f"PATH={DEFAULT_PATH}"], "Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": []}})


def _normalise(name: str) -> str:
    from sandbox.reference import parse_reference

    return str(parse_reference(name))


class ImageStore:
    """Image-level operations over a ``Store``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- lookup -------------------------------------------------------------------------------
    def _entries(self) -> list[dict[str, Any]]:
        return list(self.store.load_index().get("manifests", []))

    def _load(self, manifest_digest: str, names: tuple[str, ...]) -> Image:
        manifest = json.loads(self.store.read_blob(manifest_digest))
        config_digest = manifest["config"]["digest"]
        config = json.loads(self.store.read_blob(config_digest))
        return Image(id=config_digest, manifest_digest=manifest_digest, names=names,
                     config=config, layers=tuple(manifest.get("layers", [])))

    def list(self) -> list[Image]:
        by_manifest: dict[str, list[str]] = {}
        for entry in self._entries():
            names = by_manifest.setdefault(entry["digest"], [])
            name = (entry.get("annotations") or {}).get(REF_ANNOTATION)
            if name:
                names.append(name)
        images = []
        for digest, names in by_manifest.items():
            try:
                images.append(self._load(digest, tuple(names)))
            except (StoreError, ValueError, KeyError):
                continue
        return images

    def get(self, ref: str) -> Image:
        """An image by name (normalised as Docker does), full id, or unique id prefix."""
        if ref == HOST_IMAGE:
            return _host_image()
        images = self.list()
        hexref = ref[7:] if ref.startswith("sha256:") else ref
        if hexref and len(hexref) <= 64 and all(c in "0123456789abcdef" for c in hexref):
            matches = {img.id: img for img in images if img.id[7:].startswith(hexref)}
            if len(matches) == 1:
                return next(iter(matches.values()))
            if len(matches) > 1:
                raise SandboxError(f"image id prefix {ref} is ambiguous",
                                   hint="give more characters")
        try:
            name = _normalise(ref)
        except SandboxError:
            if ":" in hexref or len(hexref) > 64:
                raise
            raise ImageNotFound(f"unable to find image '{ref}' locally") from None
        for img in images:
            if name in img.names:
                return img
        raise ImageNotFound(f"unable to find image '{ref}' locally",
                            hint=f"pull it with `sandbox pull {ref}` or import it")

    # -- writing ------------------------------------------------------------------------------
    def add(self, manifest_bytes: bytes, names: list[str]) -> Image:
        """Record an image whose manifest, config and layer blobs are in the store."""
        digest = self.store.put_blob(manifest_bytes)
        with self.store.lock("index"):
            index = self.store.load_index()
            kept = []
            for entry in index["manifests"]:
                name = (entry.get("annotations") or {}).get(REF_ANNOTATION)
                if name in names:
                    continue  # the name moves to the new image
                if not name and entry["digest"] == digest:
                    continue
                kept.append(entry)
            base = {"mediaType": MANIFEST_MEDIA_TYPE, "digest": digest,
                    "size": len(manifest_bytes)}
            if names:
                kept += [{**base, "annotations": {REF_ANNOTATION: n}} for n in names]
            else:
                kept.append(base)
            kept = self._keep_dangling(kept)
            index["manifests"] = kept
            self.store.save_index(index)
        return self._load(digest, tuple(names))

    @staticmethod
    def _keep_dangling(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Images that lost their last name stay, untagged (``<none>``), as Docker's do."""
        return entries

    def tag(self, image: Image, name: str) -> None:
        name = _normalise(name)
        with self.store.lock("index"):
            index = self.store.load_index()
            entries = [e for e in index["manifests"]
                       if (e.get("annotations") or {}).get(REF_ANNOTATION) != name
                       and not (e["digest"] == image.manifest_digest and not e.get("annotations"))]
            entries.append({"mediaType": MANIFEST_MEDIA_TYPE, "digest": image.manifest_digest,
                            "size": self.store.blob_size(image.manifest_digest),
                            "annotations": {REF_ANNOTATION: name}})
            index["manifests"] = entries
            self.store.save_index(index)

    def remove(self, ref: str, *, force: bool = False,
               in_use: set[str] | None = None) -> list[str]:
        """``rmi``: untag a name, or delete an image by id; returns Docker-style lines."""
        image = self.get(ref)
        if image.builtin:
            raise SandboxError("the built-in image host cannot be removed")
        out: list[str] = []
        by_name = ref != image.id and not image.id[7:].startswith(ref.removeprefix("sha256:"))
        with self.store.lock("index"):
            index = self.store.load_index()
            entries = index["manifests"]
            if by_name and len(image.names) > 1:
                name = _normalise(ref)
                index["manifests"] = [e for e in entries if not (
                    (e.get("annotations") or {}).get(REF_ANNOTATION) == name)]
                self.store.save_index(index)
                return [f"Untagged: {name}"]
            if in_use and image.id in in_use and not force:
                raise SandboxError(f"unable to remove image {ref}: it is used by a container",
                                   hint="remove the container first or use rmi -f")
            if len(image.names) > 1 and not by_name and not force:
                raise SandboxError(f"unable to delete {image.id[7:19]} (must be forced): "
                                   "image is referenced in multiple repositories")
            index["manifests"] = [e for e in entries if e["digest"] != image.manifest_digest]
            self.store.save_index(index)
        out += [f"Untagged: {n}" for n in image.names]
        out.append(f"Deleted: {image.id}")
        self.gc()
        return out

    # -- layers -------------------------------------------------------------------------------
    def layer_dirs(self, image: Image) -> list[str]:
        """The unpacked layer dirs of ``image``, top-most first, unpacking missing ones."""
        chains = image.chain_ids
        missing = [i for i, c in enumerate(chains) if not self.store.has_layer(c)]
        if missing:
            from sandbox.runtime.userns import run_in_userns

            run_in_userns(_unpack_layers, self.store.root,
                          [(chains[i], image.layers[i]["digest"], chains[i - 1] if i else None)
                           for i in missing])
        return [self.store.layer_diff(c) for c in reversed(chains)]

    def import_rootfs(self, src: str, names: list[str], *, changes: dict[str, Any] | None = None,
                      message: str = "") -> Image:
        """``sandbox import``: a rootfs tarball or directory becomes a one-layer image."""
        if not os.path.exists(src):
            raise SandboxError(f"cannot import {src}: no such file or directory")
        from sandbox.runtime.userns import run_in_userns

        self.store.ensure()
        diff_id, digest, size, media_type = run_in_userns(_import_layer, self.store.root,
                                                          os.path.abspath(src))
        created = _now()
        run_cfg: dict[str, Any] = {"Env": [f"PATH={DEFAULT_PATH}"]}
        run_cfg.update(changes or {})
        config = {
            "created": created, "architecture": host_arch(), "os": "linux",
            "config": run_cfg, "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": created, "created_by": f"sandbox import {src}",
                         **({"comment": message} if message else {})}],
        }
        config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        config_digest = self.store.put_blob(config_bytes)
        manifest = {
            "schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest,
                       "size": len(config_bytes)},
            "layers": [{"mediaType": media_type, "digest": digest, "size": size}],
        }
        manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        return self.add(manifest_bytes, [_normalise(n) for n in names])

    # -- garbage collection -------------------------------------------------------------------
    def referenced(self) -> tuple[set[str], set[str]]:
        """(blob digests, chain ids) still referenced by some image."""
        blobs: set[str] = set()
        chains: set[str] = set()
        for image in self.list():
            blobs.add(image.manifest_digest)
            blobs.add(image.id)
            blobs.update(layer["digest"] for layer in image.layers)
            chains.update(image.chain_ids)
        return blobs, chains

    def gc(self) -> tuple[int, int]:
        """Remove blobs and unpacked layers no image references; returns the counts."""
        with self.store.lock("index"):
            blobs, chains = self.referenced()
            dead_blobs = [d for d in self.store.iter_blobs() if d not in blobs]
            dead_layers = [c for c in self.store.iter_layers() if c not in chains
                           and not _layer_in_use(self.store, c)]
            for digest in dead_blobs:
                try:
                    os.unlink(self.store.blob_path(digest))
                except FileNotFoundError:
                    pass
            if dead_layers:
                from sandbox.runtime.userns import run_in_userns

                run_in_userns(_remove_dirs, self.store.root,
                              [self.store.layer_dir(c) for c in dead_layers])
        return len(dead_blobs), len(dead_layers)

    def iter_names(self) -> Iterator[tuple[str, Image]]:
        for image in self.list():
            for name in image.names:
                yield name, image


def _layer_in_use(store: Store, chain_id: str) -> bool:
    """A layer a container still stacks must stay even when its image is gone."""
    diff = store.layer_diff(chain_id)
    for cid in store.iter_containers():
        try:
            cfg = store.read_json(os.path.join(store.container_dir(cid), "config.json"))
        except (OSError, ValueError):
            continue
        if diff in cfg.get("rootfs", {}).get("lowers", []):
            return True
    return False


# -- run inside the user namespace (module-level: picklable for the spawned helper) ----------

def _owner_policy() -> str:
    from sandbox.runtime.idmap import detect_mapping

    return "chown" if detect_mapping().mode == "subuid" else "xattr"


def _finish_layer(store: Store, tmp: str, chain_id: str, diff_id: str, parent: str | None,
                  stats: Any) -> None:
    meta = {"chain_id": chain_id, "diff_id": diff_id, "parent": parent,
            "created": _now(), "stats": getattr(stats, "__dict__", None) or str(stats)}
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f)
    try:
        os.rename(tmp, store.layer_dir(chain_id))
    except OSError:
        if store.has_layer(chain_id):  # another process won the race: same content
            store.rm_rf(tmp)
        else:
            raise


def _unpack_layers(root: str, todo: list[tuple[str, str, str | None]]) -> None:
    from sandbox import layers

    store = Store(root).ensure()
    owners = _owner_policy()
    for chain_id, digest, parent in todo:
        with store.lock(f"layer-{chain_id[7:]}"):
            if store.has_layer(chain_id):
                continue
            tmp = store.mkdtemp(suffix=".layer")
            try:
                os.mkdir(os.path.join(tmp, "diff"), 0o755)
                with store.open_blob(digest) as f:
                    stats = layers.unpack_layer(f, os.path.join(tmp, "diff"), owners=owners)
                _finish_layer(store, tmp, chain_id, chain_id, parent, stats)
            except BaseException:
                store.rm_rf(tmp)
                raise


def _import_layer(root: str, src: str) -> tuple[str, str, int, str]:
    from sandbox import layers

    store = Store(root).ensure()
    tmp = store.mkdtemp(suffix=".layer")
    fd, blob_tmp = store.mkstemp(suffix=".blob")
    try:
        diff = os.path.join(tmp, "diff")
        os.mkdir(diff, 0o755)
        stats = layers.import_rootfs(src, diff, owners=_owner_policy())
        with os.fdopen(fd, "wb") as out:
            digests = layers.write_layer(diff, out, compression="gzip")
        os.chmod(blob_tmp, 0o644)
        os.replace(blob_tmp, store.blob_path(digests.digest))
        chain_id = digests.diff_id
        with store.lock(f"layer-{chain_id[7:]}"):
            if store.has_layer(chain_id):
                store.rm_rf(tmp)
            else:
                _finish_layer(store, tmp, chain_id, digests.diff_id, None, stats)
        return digests.diff_id, digests.digest, digests.size, digests.media_type
    except BaseException:
        store.rm_rf(tmp)
        if os.path.exists(blob_tmp):
            os.unlink(blob_tmp)
        raise


def _remove_dirs(root: str, paths: list[str]) -> None:
    store = Store(root)
    for path in paths:
        store.rm_rf(path)
