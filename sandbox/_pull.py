"""Pull and push of images between a registry and the store (``sandbox pull`` / ``push``).

A pull resolves the reference (answering at once when the store has that manifest already),
fetches missing blobs under a per-blob lock (several processes pulling one image download each
blob once), unpacks the layers inside the user namespace, and only then records the image: an
interrupted or refused pull leaves verified blobs for the next try and no image, no half layer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sandbox._progress import NullProgress, Progress
from sandbox.oci import INDEX_MEDIA_TYPES, Platform
from sandbox.reference import Reference, parse_reference
from sandbox.store import Store

if TYPE_CHECKING:
    from sandbox.images import Image, ImageStore
    from sandbox.registry import RegistryClient

__all__ = ["pull", "push", "LockingSink"]

logger = logging.getLogger(__name__)


class LockingSink:
    """The store as the registry client's ``BlobSink``, one download per blob at a time."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def has_blob(self, digest: str) -> bool:
        return self.store.has_blob(digest)

    def ingest_blob(self, digest: str, chunks: Iterable[bytes], *,
                    size: int | None = None) -> None:
        self.store.ingest_blob_once(digest, chunks, size=size)


def _client(client: RegistryClient | None) -> RegistryClient:
    if client is not None:
        return client
    from sandbox.registry import RegistryClient

    return RegistryClient()


def _up_to_date(images: ImageStore, name: str, manifest_digest: str) -> Image | None:
    """The local image ``name`` if it is ``manifest_digest`` and fully unpacked."""
    for image in images.list():
        if image.manifest_digest == manifest_digest and name in image.names:
            if all(images.store.has_layer(c) for c in image.chain_ids):
                return image
    return None


def pull(images: ImageStore, ref_text: str, *, platform: Platform | None = None,
         progress: Progress | None = None, client: RegistryClient | None = None,
         unpack: bool = True) -> tuple[Image, bool]:
    """Pull ``ref_text``; returns (image, True if anything changed locally)."""
    ref = parse_reference(ref_text)
    progress = progress or NullProgress()
    store = images.store.ensure()
    images.clean_tmp()
    own = client is None
    rc = _client(client)
    try:
        data, media_type, digest, top = rc.resolve(ref, platform)
        names = [str(ref)] if ref.tag and not ref.digest else []
        top_digest = top[2] if top else digest
        repo_digests = [f"{ref.name}@{top_digest}"]
        if names:
            current = _up_to_date(images, names[0], digest)
            if current is not None:  # (not looked up again: an rmi may have come since)
                return current, False
        with store.lock("gc", shared=True):  # no blob or layer goes from here on
            if not names and store.has_blob(digest):
                known = [i for i in images.list() if i.manifest_digest == digest]
                if known and all(store.has_layer(c) for c in known[0].chain_ids):
                    image = images.add(data, [], repo_digests=repo_digests,
                                       media_type=media_type)
                    return image, False
            rc.pull(ref.with_digest(digest), LockingSink(store), platform=platform,
                    progress=progress)
            if top is not None and top[1] in INDEX_MEDIA_TYPES:
                store.put_blob(top[0])  # kept for RepoDigests and save of the index
            image = _record(images, data, media_type, names, repo_digests, unpack)
        return image, True
    finally:
        if own:
            rc.close()


def _record(images: ImageStore, data: bytes, media_type: str, names: list[str],
            repo_digests: list[str], unpack: bool) -> Image:
    """Unpack (verifying diff ids), then add: a refused layer leaves no image behind."""
    import json

    from sandbox.images import Image

    manifest = json.loads(data)
    config = json.loads(images.store.read_blob(manifest["config"]["digest"]))
    draft = Image(id=manifest["config"]["digest"], manifest_digest="", names=(),
                  config=config, layers=tuple(manifest.get("layers", [])))
    if unpack:
        images.unpack(draft)
    return images.add(data, names, repo_digests=repo_digests, media_type=media_type)


def _mount_sources(image: Image, target: Reference) -> list[str]:
    """Repositories on ``target``'s registry that hold this image's blobs (cross-repo mount)."""
    out: list[str] = []
    for name in (*image.names, *(r.partition("@")[0] for r in image.repo_digests)):
        try:
            ref = parse_reference(name, default_tag=False)
        except Exception:  # noqa: BLE001 - a stored name that no longer parses is skipped
            continue
        if ref.domain == target.domain and ref.path != target.path and ref.path not in out:
            out.append(ref.path)
    return out


def push(images: ImageStore, ref_text: str, *, progress: Progress | None = None,
         client: RegistryClient | None = None, **kwargs: Any) -> str:
    """Push the local image ``ref_text`` to the registry its name points at."""
    target = parse_reference(ref_text)
    image = images.get(ref_text)
    if image.builtin:
        from sandbox.errors import SandboxError

        raise SandboxError("the built-in image host cannot be pushed",
                           hint="commit a container to make an image of it")
    own = client is None
    rc = _client(client)
    try:
        digest = rc.push(target, images.store, image.manifest_digest,
                         progress=progress or NullProgress(),
                         mount_from=_mount_sources(image, target), **kwargs)
    finally:
        if own:
            rc.close()
    images.record_repo_digest(image, str(target), digest)
    return digest
