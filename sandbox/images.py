"""Images in the store: lookup, import, listing, removal and layer unpacking.

Image records live in the OCI layout's ``index.json``: one manifest descriptor per name, with the
name in ``org.opencontainers.image.ref.name`` (untagged images keep a descriptor without one) and
the registry digest it was pulled or pushed as in ``io.sandbox.repo-digest`` (Docker's
``RepoDigests``). Layers are unpacked once, by chain id, inside the user namespace the containers
use, and checked against the config's diff ids while they stream.

Locks (always taken in this order): ``gc`` (shared by writers that add blobs before an image
refers to them: pull, load, import; exclusive for garbage collection), then ``index``, then
``blob-<hex>`` / ``layer-<hex>``.
"""

from __future__ import annotations

import builtins
import os
import time

from sandbox import _json as json
from sandbox._record import field, record
from sandbox.errors import ImageNotFound, SandboxError, StoreError
from sandbox.store import Store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

__all__ = ["Image", "ImageStore", "HOST_IMAGE", "REF_ANNOTATION", "chain_ids", "host_arch",
           "DEFAULT_PATH", "DiskUsage", "REPO_DIGEST_ANNOTATION"]

REF_ANNOTATION = "org.opencontainers.image.ref.name"
REPO_DIGEST_ANNOTATION = "io.sandbox.repo-digest"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_GZIP_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_IMAGE = "host"
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
         "s390x": "s390x", "riscv64": "riscv64", "i686": "386"}


def host_arch() -> str:
    machine = os.uname().machine
    return _ARCH.get(machine, machine)


def chain_ids(diff_ids: list[str]) -> list[str]:
    """OCI chain ids: ChainID(n) = sha256(ChainID(n-1) + " " + DiffID(n))."""
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            import hashlib

            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@record
class Image:
    """An image as the engine needs it."""

    id: str                       # the config digest, as Docker's image id
    manifest_digest: str
    names: tuple[str, ...]
    config: dict[str, Any] = field(hash=False, compare=False)
    layers: tuple[dict[str, Any], ...] = field(hash=False, compare=False, default=())
    builtin: bool = False
    repo_digests: tuple[str, ...] = ()

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
        """Compressed size of the layers (what a pull downloads)."""
        return sum(int(layer.get("size", 0)) for layer in self.layers)

    @property
    def dangling(self) -> bool:
        return not self.names and not self.builtin


def _host_image() -> Image:
    return Image(id="host", manifest_digest="", names=(HOST_IMAGE,), builtin=True,
                 config={"os": "linux", "architecture": host_arch(),
                         "config": {"Env": [f"PATH={DEFAULT_PATH}"], "Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": []}})


def _normalise(name: str) -> str:
    from sandbox.reference import parse_reference

    return str(parse_reference(name))


def _name_of(entry: dict[str, Any]) -> str | None:
    return (entry.get("annotations") or {}).get(REF_ANNOTATION)


def _repo_digest_of(entry: dict[str, Any]) -> str | None:
    return (entry.get("annotations") or {}).get(REPO_DIGEST_ANNOTATION)


@record
class DiskUsage:
    """``system df`` numbers for images: bytes of blobs and unpacked layers."""

    images: int
    active: int
    size: int
    reclaimable: int


class ImageStore:
    """Image-level operations over a ``Store``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- lookup -------------------------------------------------------------------------------
    def _entries(self) -> builtins.list[dict[str, Any]]:
        return list(self.store.load_index().get("manifests", []))

    def _load(self, manifest_digest: str, names: tuple[str, ...],
              repo_digests: tuple[str, ...] = ()) -> Image:
        manifest = json.loads(self.store.read_blob(manifest_digest))
        config_digest = manifest["config"]["digest"]
        config = json.loads(self.store.read_blob(config_digest))
        return Image(id=config_digest, manifest_digest=manifest_digest, names=names,
                     config=config, layers=tuple(manifest.get("layers", [])),
                     repo_digests=repo_digests)

    def _by_manifest(self) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
        """manifest digest → (names, repo digests), from ``index.json`` alone."""
        by_manifest: dict[str, tuple[builtins.list[str], builtins.list[str]]] = {}
        for entry in self._entries():
            names, repo_digests = by_manifest.setdefault(entry["digest"], ([], []))
            name, repo_digest = _name_of(entry), _repo_digest_of(entry)
            if name and name not in names:
                names.append(name)
            if repo_digest and repo_digest not in repo_digests:
                repo_digests.append(repo_digest)
        return {d: (tuple(n), tuple(r)) for d, (n, r) in by_manifest.items()}

    def _try_load(self, digest: str, names: tuple[str, ...],
                  repo_digests: tuple[str, ...]) -> Image | None:
        try:
            return self._load(digest, names, repo_digests)
        except (StoreError, ValueError, KeyError, TypeError):
            return None  # a broken entry is no image

    def list(self) -> builtins.list[Image]:
        images = []
        for digest, (names, repo_digests) in self._by_manifest().items():
            img = self._try_load(digest, names, repo_digests)
            if img is not None:
                images.append(img)
        return images

    def find(self, ref: str) -> Image | None:
        """Like ``get``, None when absent."""
        try:
            return self.get(ref)
        except ImageNotFound:
            return None

    def get(self, ref: str) -> Image:
        """An image by name (normalised as Docker does), ``name@digest``, full id, or unique id
        prefix. Names come first, as in Docker, and are found in ``index.json`` alone: only the
        image found is read, however many the store holds."""
        if ref == HOST_IMAGE:
            return _host_image()
        from sandbox.reference import parse_reference

        hexref = ref[7:] if ref.startswith("sha256:") else ref
        try:
            parsed = parse_reference(ref)
        except SandboxError:
            if ":" in hexref or len(hexref) > 64:
                raise
            parsed = None
        if parsed is not None:
            for digest, (names, repo_digests) in self._by_manifest().items():
                if parsed.digest:
                    found = f"{parsed.name}@{parsed.digest}" in repo_digests or (
                        digest == parsed.digest
                        and any(n.startswith(parsed.name + ":") for n in names))
                else:
                    found = str(parsed) in names
                img = self._try_load(digest, names, repo_digests) if found else None
                if img is not None:
                    return img
        if hexref and len(hexref) <= 64 and all(c in "0123456789abcdef" for c in hexref):
            matches = {img.id: img for img in self.list() if img.id[7:].startswith(hexref)}
            if len(matches) == 1:
                return next(iter(matches.values()))
            if len(matches) > 1:
                raise SandboxError(f"image id prefix {ref} is ambiguous",
                                   hint="give more characters")
        raise ImageNotFound(f"unable to find image '{ref}' locally",
                            hint=f"pull it with `sandbox pull {ref}` or import it")

    # -- writing ------------------------------------------------------------------------------
    def add(self, manifest_bytes: bytes, names: builtins.list[str], *,
            repo_digests: builtins.list[str] | None = None, media_type: str = MANIFEST_MEDIA_TYPE
            ) -> Image:
        """Record an image whose config and layer blobs are in the store (the manifest blob is
        written here). ``names`` move to it from any other image; an image left without a name
        stays, untagged (``<none>``), as Docker's do."""
        names = [_normalise(n) for n in names]
        repo_digests = list(repo_digests or [])
        with self.store.lock("index"):  # (gc holds it too: the new blob is not collected)
            digest = self.store.put_blob(manifest_bytes)
            index = self.store.load_index()
            entries = index["manifests"]
            kept = [e for e in entries if _name_of(e) not in names and e["digest"] != digest]
            mine = [e for e in entries if e["digest"] == digest]
            base = {"mediaType": media_type, "digest": digest, "size": len(manifest_bytes)}
            known_names = [n for n in (_name_of(e) for e in mine) if n and n not in names]
            known_rds = [r for r in (_repo_digest_of(e) for e in mine) if r]
            new = self._entries_for(base, [*names, *known_names],
                                    list(dict.fromkeys([*repo_digests, *known_rds])))
            config_digest = json.loads(manifest_bytes)["config"]["digest"]
            index["manifests"] = self._keep_dangling(entries, kept + new,
                                                     same_config=config_digest, store=self.store)
            self.store.save_index(index)
            # built here, under the lock, from what was written: a re-read after it could
            # find the image already removed by a concurrent rmi
            all_names = [*names, *known_names]
            all_rds = list(dict.fromkeys([*repo_digests, *known_rds]))
            return self._load(digest, tuple(all_names), tuple(all_rds))

    @staticmethod
    def _entries_for(base: dict[str, Any], names: builtins.list[str],
                     repo_digests: builtins.list[str]) -> builtins.list[dict[str, Any]]:
        """One entry per name (carrying its repository's digest), then leftover digests."""
        out = []
        used: set[str] = set()
        for name in names:
            repo = name.rpartition(":")[0] if ":" in name.rpartition("/")[2] else name
            rd = next((r for r in repo_digests if r.partition("@")[0] == repo), None)
            ann = {REF_ANNOTATION: name, **({REPO_DIGEST_ANNOTATION: rd} if rd else {})}
            if rd:
                used.add(rd)
            out.append({**base, "annotations": ann})
        for rd in repo_digests:
            if rd not in used:
                out.append({**base, "annotations": {REPO_DIGEST_ANNOTATION: rd}})
        return out or [dict(base)]

    @staticmethod
    def _keep_dangling(before: builtins.list[dict[str, Any]],
                       after: builtins.list[dict[str, Any]], *, same_config: str = "",
                       store: Store | None = None) -> builtins.list[dict[str, Any]]:
        """Images that lost their last name stay, untagged (``<none>``), as Docker's do, unless
        the name moved to another manifest of the same image (same config: same image id)."""
        left = {e["digest"] for e in after}
        for entry in before:
            if entry["digest"] not in left and same_config and store is not None:
                try:
                    config = json.loads(store.read_blob(entry["digest"]))["config"]["digest"]
                except (StoreError, ValueError, KeyError, TypeError):
                    config = ""
                if config == same_config:
                    left.add(entry["digest"])
                    continue
            if entry["digest"] not in left:
                left.add(entry["digest"])
                after.append({k: v for k, v in entry.items() if k != "annotations"})
        return after

    def get_by_manifest(self, manifest_digest: str) -> Image:
        for image in self.list():
            if image.manifest_digest == manifest_digest:
                return image
        raise ImageNotFound(f"no image with manifest {manifest_digest}")

    def tag(self, image: Image, name: str) -> None:
        name = _normalise(name)
        size = self.store.blob_size(image.manifest_digest)
        with self.store.lock("index"):
            index = self.store.load_index()
            before = index["manifests"]
            entries = [e for e in before if _name_of(e) != name
                       and not (e["digest"] == image.manifest_digest and not e.get("annotations"))]
            media_type = next((e.get("mediaType") for e in before
                               if e["digest"] == image.manifest_digest), MANIFEST_MEDIA_TYPE)
            entries.append({"mediaType": media_type, "digest": image.manifest_digest,
                            "size": size, "annotations": {REF_ANNOTATION: name}})
            index["manifests"] = self._keep_dangling(before, entries)
            self.store.save_index(index)

    def record_repo_digest(self, image: Image, name: str, digest: str) -> None:
        """After a push: ``name``'s repository holds the image as ``digest``."""
        name = _normalise(name)
        repo_digest = f"{name.rpartition(':')[0] if ':' in name.rpartition('/')[2] else name}" \
                      f"@{digest}"
        with self.store.lock("index"):
            index = self.store.load_index()
            for entry in index["manifests"]:
                if entry["digest"] == image.manifest_digest and _name_of(entry) == name:
                    entry.setdefault("annotations", {})[REPO_DIGEST_ANNOTATION] = repo_digest
            self.store.save_index(index)

    def remove(self, ref: str, *, force: bool = False,
               in_use: set[str] | dict[str, tuple[str, str]] | None = None,
               gc: bool = True) -> builtins.list[str]:
        """``rmi``: untag a name, or delete an image by id; returns Docker-style lines.

        ``in_use``: ids of images containers use, or image id -> (container id, status). As
        Docker: an image a container uses is removed only with ``force``, and never while a
        container runs it (by name, ``force`` then only untags it)."""
        image = self.get(ref)
        if image.builtin:
            raise SandboxError("the built-in image host cannot be removed")
        by_id = image.id[7:].startswith(ref.removeprefix("sha256:"))
        user = None
        if in_use and image.id in in_use:
            user = in_use[image.id] if isinstance(in_use, dict) else ("", "")
        with self.store.lock("index"):
            index = self.store.load_index()
            entries = index["manifests"]
            if not by_id and len(image.names) > 1:
                name = _normalise(ref)
                index["manifests"] = [e for e in entries if _name_of(e) != name]
                self.store.save_index(index)
                return [f"Untagged: {_familiar(name)}"]
            if user is not None:
                cid = user[0][:12] or "?"
                status = "running" if user[1] in ("running", "paused") else user[1]
                if by_id and (status == "running" or not force):
                    how = "cannot be forced" if status == "running" else "must be forced"
                    state = "running" if status == "running" else "stopped"
                    raise SandboxError(f"conflict: unable to delete {image.id[7:19]} ({how}) - "
                                       f"image is being used by {state} container {cid}",
                                       hint=f"remove the container first: sandbox rm -f {cid}")
                if not force:
                    raise SandboxError(f'conflict: unable to remove repository reference "{ref}" '
                                       f"(must force) - container {cid} is using its referenced "
                                       f"image {image.id[7:19]}",
                                       hint="remove the container first, or untag it with "
                                            "rmi -f")
                if status == "running":  # untagged only: the image stays, as <none>
                    mine = [e for e in entries if e["digest"] == image.manifest_digest]
                    index["manifests"] = [e for e in entries if e not in mine] + [
                        {k: v for k, v in mine[0].items() if k != "annotations"}]
                    self.store.save_index(index)
                    return [f"Untagged: {_familiar(n)}" for n in image.names]
            if len(image.names) > 1 and by_id and not force:
                raise SandboxError(f"unable to delete {image.id[7:19]} (must be forced): "
                                   "image is referenced in multiple repositories",
                                   hint="remove it by name, or use rmi -f")
            index["manifests"] = [e for e in entries if e["digest"] != image.manifest_digest]
            self.store.save_index(index)
        out = [f"Untagged: {_familiar(n)}" for n in image.names]
        out += [f"Untagged: {_familiar(r)}" for r in image.repo_digests]
        out.append(f"Deleted: {image.id}")
        if gc:
            self.gc()
        return out

    def intermediate(self, images: builtins.list[Image] | None = None) -> set[str]:
        """Ids of Docker's intermediate images: untagged ones another image builds on (their
        layers are a strict prefix of the other's, as a committed or built child's are).
        ``images`` lists them only with ``-a``; they are not dangling, and ``image prune``
        keeps them (removing one frees nothing while its child stays)."""
        images = self.list() if images is None else images
        chains = [tuple(i.chain_ids) for i in images]
        out = set()
        for image in images:
            mine = tuple(image.chain_ids)
            if image.names or image.builtin or not mine:
                continue
            if any(len(c) > len(mine) and c[:len(mine)] == mine for c in chains):
                out.add(image.id)
        return out

    def prune(self, *, all_images: bool = False, in_use: set[str] | None = None
              ) -> tuple[builtins.list[str], int]:
        """``image prune``: dangling images (all unused ones with ``all_images``) not used by a
        container. Returns (Docker-style lines, bytes reclaimed)."""
        in_use = in_use or set()
        before = self._footprint()
        lines: builtins.list[str] = []
        images = self.list()
        keep = set() if all_images else self.intermediate(images)
        for image in images:
            if image.id in in_use or image.id in keep or not (all_images or image.dangling):
                continue
            try:
                lines += [line[0].lower() + line[1:] for line in
                          self.remove(image.id, force=True, gc=False)]
            except ImageNotFound:
                continue
        if lines:
            self.gc()
        return lines, max(0, before - self._footprint())

    # -- layers -------------------------------------------------------------------------------
    def layer_dirs(self, image: Image) -> builtins.list[str]:
        """The unpacked layer dirs of ``image``, top-most first, unpacking missing ones."""
        self.unpack(image)
        return [self.store.layer_diff(c) for c in reversed(image.chain_ids)]

    def unpack(self, image: Image) -> int:
        """Unpack the layers of ``image`` not unpacked yet (inside the user namespace, each
        verified against its diff id); returns how many were unpacked."""
        chains = image.chain_ids
        diff_ids = image.diff_ids
        if len(diff_ids) != len(image.layers):
            raise SandboxError(f"image {image.id[7:19]} is inconsistent: {len(image.layers)} "
                               f"layers but {len(diff_ids)} diff ids in its config",
                               hint="remove it and pull it again")
        missing = [i for i, c in enumerate(chains) if not self.store.has_layer(c)]
        if missing:
            from sandbox._image_layers import unpack_layers
            from sandbox.runtime.userns import run_in_userns

            run_in_userns(unpack_layers, self.store.root,
                          [(chains[i], image.layers[i]["digest"], diff_ids[i],
                            chains[i - 1] if i else None) for i in missing])
        return len(missing)

    def clean_tmp(self) -> None:
        """Remove what interrupted pulls left in ``tmp/`` (in the user namespace if needed)."""
        left = self.store.clean_tmp()
        if left:
            from sandbox._image_layers import remove_dirs
            from sandbox.runtime.userns import run_in_userns

            try:
                run_in_userns(remove_dirs, self.store.root, left)
            except SandboxError:
                pass

    def import_rootfs(self, src: str, names: builtins.list[str], *,
                      changes: dict[str, Any] | None = None, message: str = "") -> Image:
        """``sandbox import``: a rootfs tarball or directory becomes a one-layer image."""
        if not os.path.exists(src):
            raise SandboxError(f"cannot import {src}: no such file or directory")
        from sandbox._image_layers import import_layer
        from sandbox.runtime.userns import run_in_userns

        self.store.ensure()
        with self.store.lock("gc", shared=True):
            diff_id, digest, size, media_type = run_in_userns(import_layer, self.store.root,
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
            return self.add(manifest_bytes, names)

    # -- size, garbage collection -------------------------------------------------------------
    def unpacked_size(self, image: Image) -> int:
        """Docker's image SIZE: bytes of the unpacked layers (compressed size until unpacked)."""
        total = 0
        for chain, layer in zip(image.chain_ids, image.layers, strict=False):
            total += self.store.layer_size(chain) if self.store.has_layer(chain) \
                else int(layer.get("size", 0))
        return total

    def referenced(self) -> tuple[set[str], set[str]]:
        """(blob digests, chain ids) still referenced by some image."""
        blobs: set[str] = set()
        chains: set[str] = set()
        for image in self.list():
            blobs.add(image.manifest_digest)
            blobs.add(image.id)
            blobs.update(layer["digest"] for layer in image.layers)
            blobs.update(r.partition("@")[2] for r in image.repo_digests)
            chains.update(image.chain_ids)
        blobs |= self.store.gc_root_blobs()  # e.g. layers the build cache still holds
        return blobs, chains

    def _footprint(self) -> int:
        blobs = self.store.blobs_size(self.store.iter_blobs())
        return blobs + sum(self.store.layer_size(c) for c in self.store.iter_layers())

    def discard(self, blobs: builtins.list[str], chains: builtins.list[str]) -> None:
        """Undo a refused load: remove the blobs it added and the layers it unpacked that no
        image references (a concurrent load or pull may have recorded one meanwhile; waiting
        for ``gc`` means none is between adding and recording)."""
        with self.store.lock("gc"), self.store.lock("index"):
            referenced_blobs, referenced_chains = self.referenced()
            for digest in blobs:
                if digest not in referenced_blobs:
                    try:
                        os.unlink(self.store.blob_path(digest))
                    except FileNotFoundError:
                        pass
            dead = [self.store.layer_dir(c) for c in chains
                    if c not in referenced_chains and os.path.lexists(self.store.layer_dir(c))
                    and not _layer_in_use(self.store, c)]
            if dead:
                from sandbox._image_layers import remove_dirs
                from sandbox.runtime.userns import run_in_userns

                run_in_userns(remove_dirs, self.store.root, dead)

    def gc(self) -> tuple[int, int]:
        """Remove blobs and unpacked layers no image references; returns the counts.

        Waits for running pulls and loads (they hold ``gc`` shared while their blobs are not
        referenced yet)."""
        with self.store.lock("gc"), self.store.lock("index"):
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
                from sandbox._image_layers import remove_dirs
                from sandbox.runtime.userns import run_in_userns

                run_in_userns(remove_dirs, self.store.root,
                              [self.store.layer_dir(c) for c in dead_layers])
        return len(dead_blobs), len(dead_layers)

    def disk_usage(self, in_use: set[str]) -> DiskUsage:
        """``system df`` for images: shared layers count once; reclaimable is what removing
        every image no container uses would free."""
        images = self.list()
        size = self._footprint()
        kept_blobs: set[str] = set()
        kept_chains: set[str] = set()
        for image in images:
            if image.id in in_use:
                kept_blobs.update([image.manifest_digest, image.id,
                                   *(layer["digest"] for layer in image.layers)])
                kept_chains.update(image.chain_ids)
        kept = self.store.blobs_size(kept_blobs) + sum(
            self.store.layer_size(c) for c in kept_chains if self.store.has_layer(c))
        active = sum(1 for image in images if image.id in in_use)
        return DiskUsage(images=len(images), active=active, size=size,
                         reclaimable=max(0, size - kept))

    def iter_names(self) -> Iterator[tuple[str, Image]]:
        for image in self.list():
            for name in image.names:
                yield name, image

    # -- registry ------------------------------------------------------------------------------
    def pull(self, ref: str, **kwargs: Any) -> tuple[Image, bool]:
        """Pull ``ref`` (see ``sandbox._pull.pull``); returns (image, whether it was new)."""
        from sandbox._pull import pull

        return pull(self, ref, **kwargs)

    def push(self, ref: str, **kwargs: Any) -> str:
        """Push the local image ``ref`` to its registry; returns the manifest digest."""
        from sandbox._pull import push

        return push(self, ref, **kwargs)


def _familiar(name: str) -> str:
    from sandbox.reference import parse_reference

    try:
        return parse_reference(name).familiar
    except SandboxError:
        return name


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
