"""Image archives: ``docker save`` tars (classic and Docker 25+ OCI-layout style), OCI archives
and OCI layout directories; loading (any compression) and saving.

Loading never trusts the archive: every blob is hashed as it is copied into the store (against
its name where the format names blobs by digest), layers are unpacked inside the user namespace
and checked against the config's diff ids, and an image is recorded only once all of that
succeeded. Archive member names are looked up, never extracted as paths.

Saved docker-archives follow Docker 25+: an OCI layout (``oci-layout``, ``index.json``,
``blobs/sha256/…``) plus ``manifest.json`` and ``repositories``, with uncompressed layers, which
``docker load``, ``podman load`` and ``skopeo`` all read.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, BinaryIO

from sandbox.errors import DigestMismatch, SandboxError
from sandbox.images import REF_ANNOTATION, Image, ImageStore
from sandbox.oci import (
    INDEX_MEDIA_TYPES,
    MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_LAYER,
    MEDIA_TYPE_OCI_LAYER_GZIP,
    MEDIA_TYPE_OCI_LAYER_ZSTD,
    MEDIA_TYPE_OCI_MANIFEST,
    Index,
    select_manifest,
)
from sandbox.store import Store

__all__ = ["load", "save", "FORMATS", "ArchiveError"]

FORMATS = ("docker-archive", "oci-archive")
NAME_ANNOTATION = "io.containerd.image.name"
_CHUNK = 1 << 20
_MAX_JSON = 16 << 20
_MTIME = 0


class ArchiveError(SandboxError):
    """The archive is malformed or incomplete."""


# -- reading ----------------------------------------------------------------------------------

class _Reader:
    """Files of an archive by name: a tar (random access) or an OCI layout directory."""

    def __init__(self, tar: tarfile.TarFile | None, root: str | None, label: str) -> None:
        self.tar = tar
        self.root = root
        self.label = label
        self.names: set[str] = set()
        if tar is not None:
            self.names = {os.path.normpath(m.name).lstrip("/") for m in tar.getmembers()}

    def has(self, name: str) -> bool:
        if self.root is not None:
            return os.path.isfile(self._dir_path(name))
        return os.path.normpath(name) in self.names

    def _dir_path(self, name: str) -> str:
        """``name`` in the layout directory; refused if it (or a symlink on the way) leads out
        of it: a layout is read, never trusted."""
        norm = os.path.normpath(name)
        assert self.root is not None
        root = os.path.realpath(self.root)
        real = os.path.realpath(os.path.join(root, norm))
        if norm.startswith("..") or os.path.isabs(norm) or \
                os.path.commonpath([root, real]) != root:
            raise ArchiveError(f"{self.label}: refusing path {name!r} outside the layout")
        return real

    def open(self, name: str) -> IO[bytes]:
        if self.root is not None:
            path = self._dir_path(name)
            if os.path.exists(path) and not os.path.isfile(path):
                raise ArchiveError(f"{self.label}: {name} is not a regular file")
            try:
                return open(path, "rb")
            except FileNotFoundError:
                raise ArchiveError(f"{self.label}: {name} is missing") from None
        assert self.tar is not None
        norm = os.path.normpath(name).lstrip("/")
        try:
            member = self.tar.getmember(norm)
        except KeyError:
            try:
                member = self.tar.getmember("./" + norm)
            except KeyError:
                raise ArchiveError(f"{self.label}: {name} is missing from the archive",
                                   hint="the archive is incomplete") from None
        try:
            f = self.tar.extractfile(member)
        except (KeyError, tarfile.TarError):
            f = None
        if f is None:
            raise ArchiveError(f"{self.label}: {name} is not a regular file in the archive")
        return f

    def json(self, name: str) -> Any:
        with self.open(name) as f:
            data = f.read(_MAX_JSON + 1)
        try:
            return json.loads(data)
        except ValueError:
            raise ArchiveError(f"{self.label}: {name} is not valid JSON") from None


@contextlib.contextmanager
def _open_archive(store: Store, src: str | BinaryIO) -> Iterator[_Reader]:
    """A reader of ``src``: a directory, a tar file, or a (compressed) stream spooled to tmp/."""
    if isinstance(src, str) and os.path.isdir(src):
        yield _Reader(None, src, src)
        return
    label = src if isinstance(src, str) else "stdin"
    spool: str | None = None
    try:
        raw: BinaryIO = open(src, "rb") if isinstance(src, str) else src
        try:
            from sandbox._layer_codec import sniff_compression

            head = _peek(raw)
            kind = sniff_compression(head)
            if kind is not None or not isinstance(src, str):
                from sandbox.layers import open_decompressed

                fd, spool = store.mkstemp(suffix=".archive")
                with os.fdopen(fd, "wb") as out:
                    stream = open_decompressed(raw)
                    try:
                        shutil.copyfileobj(stream, out, _CHUNK)
                    finally:
                        if stream is not raw:
                            stream.close()
        finally:
            if isinstance(src, str):
                raw.close()
        path = spool or str(src)
        try:
            tar = tarfile.open(path, "r:")
        except (tarfile.TarError, EOFError) as exc:
            raise ArchiveError(f"{label} is not a tar archive: {exc}",
                               hint="give a file made by `docker save`, `podman save` or "
                                    "`sandbox save`") from None
        with tar:
            yield _Reader(tar, None, label)
    except OSError as exc:
        if exc.errno == 28:
            raise SandboxError(f"no space left on the device of {store.root} while reading "
                               f"{label}", hint="free some space, then retry") from None
        raise
    finally:
        if spool:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spool)


def _peek(raw: BinaryIO) -> bytes:
    if hasattr(raw, "peek"):
        return bytes(raw.peek(8)[:8])
    if _seekable(raw):
        pos = raw.tell()
        head = raw.read(8)
        raw.seek(pos)
        return head
    return b""


def _seekable(f: BinaryIO) -> bool:
    try:
        return bool(f.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _copy_blob(store: Store, reader: _Reader, name: str, digest: str | None,
               size: int | None = None, added: list[str] | None = None) -> tuple[str, int]:
    """Copy archive file ``name`` into the store, verified against ``digest`` when given;
    blobs the store did not have are appended to ``added``."""
    with reader.open(name) as f:
        if digest is not None:
            if store.has_blob(digest):
                return digest, store.blob_size(digest)
            store.ingest_blob_once(digest, iter(lambda: f.read(_CHUNK), b""), size=size)
            if added is not None:
                added.append(digest)
            return digest, store.blob_size(digest)
        digest, size, new = store.ingest_new_file(f)  # type: ignore[arg-type]
        if new and added is not None:
            added.append(digest)
        return digest, size


def _blob_digest_of_name(name: str) -> str | None:
    """``blobs/sha256/<hex>`` → ``sha256:<hex>`` (Docker 25+ names); else None."""
    parts = os.path.normpath(name).split("/")
    if len(parts) == 3 and parts[0] == "blobs" and \
            len(parts[2]) == {"sha256": 64, "sha512": 128}.get(parts[1]):
        return f"{parts[1]}:{parts[2]}"
    return None


def _media_type_of(store: Store, digest: str) -> str:
    from sandbox._layer_codec import sniff_compression

    with store.open_blob(digest) as f:
        kind = sniff_compression(f.read(8))
    return {"gzip": MEDIA_TYPE_OCI_LAYER_GZIP, "zstd": MEDIA_TYPE_OCI_LAYER_ZSTD,
            None: MEDIA_TYPE_OCI_LAYER}.get(kind, MEDIA_TYPE_OCI_LAYER)


def _load_docker(images: ImageStore, reader: _Reader, added: list[str]
                 ) -> list[tuple[bytes, list[str]]]:
    """``manifest.json`` entries → (OCI manifest bytes, names); blobs copied into the store."""
    store = images.store
    entries = reader.json("manifest.json")
    if not isinstance(entries, list):
        raise ArchiveError(f"{reader.label}: manifest.json is not a list")
    out = []
    for entry in entries:
        try:
            config_name, layer_names = str(entry["Config"]), [str(x) for x in entry["Layers"]]
            tags = [str(t) for t in entry.get("RepoTags") or []]
        except (KeyError, TypeError):
            raise ArchiveError(f"{reader.label}: malformed manifest.json entry") from None
        cfg_digest, cfg_size = _copy_blob(store, reader, config_name,
                                          _blob_digest_of_name(config_name), added=added)
        try:
            config = json.loads(store.read_blob(cfg_digest))
        except ValueError:
            raise ArchiveError(f"{reader.label}: {config_name} is not valid JSON") from None
        if not isinstance(config, dict):
            raise ArchiveError(f"{reader.label}: {config_name} is not an image config")
        diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
        if len(diff_ids) != len(layer_names):
            raise ArchiveError(f"{reader.label}: {len(layer_names)} layers for "
                               f"{len(diff_ids)} diff ids in {config_name}")
        layers = []
        for name, diff_id in zip(layer_names, diff_ids, strict=True):
            digest, size = _copy_blob(store, reader, name, _blob_digest_of_name(name),
                                      added=added)
            media_type = _media_type_of(store, digest)
            if media_type == MEDIA_TYPE_OCI_LAYER and digest != diff_id:
                raise DigestMismatch(f"{reader.label}: layer {name} hashes to {digest}, but "
                                     f"the image config says {diff_id}",
                                     hint="the archive is corrupt")
            layers.append({"mediaType": media_type, "digest": digest, "size": size})
        manifest = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_MANIFEST,
                    "config": {"mediaType": MEDIA_TYPE_OCI_CONFIG, "digest": cfg_digest,
                               "size": cfg_size},
                    "layers": layers}
        out.append((json.dumps(manifest, separators=(",", ":")).encode(), tags))
    return out


def _oci_names(desc: dict[str, Any]) -> list[str]:
    from sandbox.reference import parse_reference

    ann = desc.get("annotations") or {}
    for candidate in (ann.get(NAME_ANNOTATION), ann.get(REF_ANNOTATION)):
        if candidate and ("/" in candidate or ":" in candidate):
            try:
                return [str(parse_reference(candidate))]
            except SandboxError:
                continue
    return []


def _load_oci(images: ImageStore, reader: _Reader, added: list[str]
              ) -> list[tuple[bytes, list[str]]]:
    store = images.store
    index = reader.json("index.json")
    out = []
    for desc in (index.get("manifests") or []) if isinstance(index, dict) else []:
        names = _oci_names(desc)
        digest, media_type = str(desc.get("digest", "")), str(desc.get("mediaType", ""))
        for _ in range(4):
            raw = _read_verified(reader, digest)
            if media_type not in INDEX_MEDIA_TYPES and "manifests" not in json.loads(raw):
                break
            chosen = select_manifest(Index.from_json(raw, media_type or None))
            digest, media_type = chosen.digest, chosen.media_type
        manifest = json.loads(raw)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
            raise ArchiveError(f"{reader.label}: {digest} is not an image manifest")
        for blob in [manifest["config"], *manifest.get("layers", [])]:
            blob_digest = _checked_digest(reader, blob.get("digest") if isinstance(blob, dict)
                                          else None)
            _copy_blob(store, reader, _blob_name(blob_digest), blob_digest,
                       int(blob.get("size", 0)) or None, added=added)
        out.append((raw, names))
    return out


def _checked_digest(reader: _Reader, digest: Any) -> str:
    """A digest named by the archive, well formed (so its blob path stays in ``blobs/``)."""
    from sandbox.oci import validate_digest

    try:
        return validate_digest(digest)
    except SandboxError:
        raise ArchiveError(f"{reader.label}: invalid digest {str(digest)[:80]!r}",
                           hint="the archive is corrupt or hostile") from None


def _blob_name(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    return f"blobs/{algo}/{hexpart}"


def _read_verified(reader: _Reader, digest: str) -> bytes:
    digest = _checked_digest(reader, digest)
    with reader.open(_blob_name(digest)) as f:
        data = f.read(_MAX_JSON + 1)
    algo = digest.partition(":")[0]
    if f"{algo}:" + hashlib.new(algo, data).hexdigest() != digest:
        raise DigestMismatch(f"{reader.label}: blob {digest} does not match its digest",
                             hint="the archive is corrupt")
    return data


def load(images: ImageStore, src: str | BinaryIO) -> list[Image]:
    """Load every image of a docker-archive, OCI archive or OCI layout directory.

    A refused archive leaves nothing: the blobs it brought and the layers it unpacked are
    removed again (unless an image took them meanwhile)."""
    store = images.store.ensure()
    images.clean_tmp()
    added: list[str] = []
    unpacked: list[str] = []
    try:
        with store.lock("gc", shared=True), _open_archive(store, src) as reader:
            return _load_locked(images, reader, added, unpacked)
    except Exception:
        if added or unpacked:
            with contextlib.suppress(SandboxError, OSError):  # the first error is the news
                images.discard(added, unpacked)  # (after the shared gc lock is released)
        raise


def _load_locked(images: ImageStore, reader: _Reader, added: list[str],
                 unpacked: list[str]) -> list[Image]:
    store = images.store
    if reader.has("manifest.json"):
        found = _load_docker(images, reader, added)
    elif reader.has("index.json"):
        found = _load_oci(images, reader, added)
    else:
        raise ArchiveError(f"{reader.label} has neither manifest.json nor index.json",
                           hint="give a docker-archive, an OCI archive or an OCI layout")
    loaded = []
    for manifest_bytes, names in found:
        manifest = json.loads(manifest_bytes)
        config = json.loads(store.read_blob(manifest["config"]["digest"]))
        draft = Image(id=manifest["config"]["digest"], manifest_digest="", names=(),
                      config=config, layers=tuple(manifest.get("layers", [])))
        unpacked += [c for c in draft.chain_ids if not store.has_layer(c)]
        images.unpack(draft)
        media_type = manifest.get("mediaType") or MEDIA_TYPE_OCI_MANIFEST
        loaded.append(images.add(manifest_bytes, names, media_type=media_type))
    return loaded


# -- writing ----------------------------------------------------------------------------------

@dataclass
class _Writer:
    tar: tarfile.TarFile
    written: set[str]

    def add_bytes(self, name: str, data: bytes) -> None:
        if name in self.written:
            return
        self.written.add(name)
        self.add_stream(name, io.BytesIO(data), len(data))

    def add_stream(self, name: str, f: IO[bytes], size: int) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, _MTIME, 0o644
        self.tar.addfile(info, f)

    def add_dirs(self) -> None:
        for name in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, _MTIME
            self.tar.addfile(info)

    def add_blob(self, store: Store, digest: str) -> None:
        name = _blob_name(digest)
        if name in self.written:
            return
        self.written.add(name)
        with store.open_blob(digest) as f:
            self.add_stream(name, f, store.blob_size(digest))


def _uncompressed_layer(store: Store, w: _Writer, digest: str, diff_id: str) -> int:
    """Add the uncompressed form of layer blob ``digest`` as ``blobs/sha256/<diff id>``."""
    name = _blob_name(diff_id)
    from sandbox.layers import open_decompressed

    fd, tmp = store.mkstemp(suffix=".layer.tar")
    try:
        algo = diff_id.partition(":")[0]
        h = hashlib.new(algo)
        size = 0
        with store.open_blob(digest) as f, os.fdopen(fd, "w+b") as out:
            stream = open_decompressed(f)
            try:
                while chunk := stream.read(_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            finally:
                stream.close()
            if f"{algo}:" + h.hexdigest() != diff_id:
                raise DigestMismatch(f"layer {digest} does not uncompress to {diff_id}",
                                     hint="the image is corrupt; remove it and pull it again")
            if name not in w.written:
                w.written.add(name)
                out.seek(0)
                w.add_stream(name, out, size)
        return size
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _familiar(name: str) -> str:
    from sandbox.reference import parse_reference

    return parse_reference(name).familiar


def _index_entries(image: Image, desc: dict[str, Any]) -> list[dict[str, Any]]:
    if not image.names:
        return [desc]
    return [{**desc, "annotations": {NAME_ANNOTATION: name,
                                     REF_ANNOTATION: name.rpartition(":")[2]}}
            for name in image.names]


def _save_docker(store: Store, w: _Writer, todo: list[Image]) -> None:
    manifest_json: list[dict[str, Any]] = []
    index: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    for image in todo:
        layers = []
        for layer, diff_id in zip(image.layers, image.diff_ids, strict=True):
            size = _uncompressed_layer(store, w, layer["digest"], diff_id)
            layers.append({"mediaType": MEDIA_TYPE_OCI_LAYER, "digest": diff_id, "size": size})
        w.add_blob(store, image.id)
        manifest = json.dumps({"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_MANIFEST,
                               "config": {"mediaType": MEDIA_TYPE_OCI_CONFIG,
                                          "digest": image.id,
                                          "size": store.blob_size(image.id)},
                               "layers": layers}, separators=(",", ":")).encode()
        digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        w.add_bytes(_blob_name(digest), manifest)
        index += _index_entries(image, {"mediaType": MEDIA_TYPE_OCI_MANIFEST,
                                        "digest": digest, "size": len(manifest)})
        tags = [_familiar(n) for n in image.names]
        manifest_json.append({"Config": _blob_name(image.id), "RepoTags": tags or None,
                              "Layers": [_blob_name(d) for d in image.diff_ids]})
        for tag in tags:
            repo, _, t = tag.rpartition(":")
            if image.diff_ids:
                repositories.setdefault(repo, {})[t] = image.diff_ids[-1][7:]
    _finish_layout(w, index)
    w.add_bytes("manifest.json", json.dumps(manifest_json, separators=(",", ":")).encode())
    if repositories:
        w.add_bytes("repositories", json.dumps(repositories).encode())


def _save_oci(store: Store, w: _Writer, todo: list[Image]) -> None:
    index = []
    for image in todo:
        for digest in [image.id, *(layer["digest"] for layer in image.layers)]:
            w.add_blob(store, digest)
        w.add_blob(store, image.manifest_digest)
        media_type = json.loads(store.read_blob(image.manifest_digest)).get(
            "mediaType") or MEDIA_TYPE_OCI_MANIFEST
        index += _index_entries(image, {"mediaType": media_type, "digest": image.manifest_digest,
                                        "size": store.blob_size(image.manifest_digest)})
    _finish_layout(w, index)


def _finish_layout(w: _Writer, index: list[dict[str, Any]]) -> None:
    w.add_bytes("index.json", json.dumps({"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_INDEX,
                                          "manifests": index}, separators=(",", ":")).encode())
    w.add_bytes("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')


def save(images: ImageStore, refs: list[str], out: BinaryIO, *,
         fmt: str = "docker-archive") -> None:
    """Write the images ``refs`` as one archive to ``out`` (a stream: written in order)."""
    if fmt not in FORMATS:
        raise SandboxError(f"unsupported format {fmt!r}", hint="use docker-archive or "
                                                               "oci-archive")
    todo: list[Image] = []
    for ref in refs:
        image = images.get(ref)
        if image.builtin:
            raise SandboxError("the built-in image host cannot be saved",
                               hint="export a container of it instead")
        if image.id not in {i.id for i in todo}:
            by_name = [n for n in image.names if ref != image.id and _matches(ref, n)]
            todo.append(_with_names(image, by_name or list(image.names)))
        else:
            i = next(k for k, x in enumerate(todo) if x.id == image.id)
            extra = [n for n in image.names if _matches(ref, n) and n not in todo[i].names]
            todo[i] = _with_names(todo[i], [*todo[i].names, *extra])
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        w = _Writer(tar, set())
        w.add_dirs()
        (_save_docker if fmt == "docker-archive" else _save_oci)(images.store, w, todo)


def _matches(ref: str, name: str) -> bool:
    from sandbox.reference import parse_reference

    try:
        return str(parse_reference(ref)) == name
    except SandboxError:
        return False


def _with_names(image: Image, names: list[str]) -> Image:
    from sandbox._record import replace

    return replace(image, names=tuple(names))

