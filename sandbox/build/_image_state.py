"""The image a build step produces: run config, layers and history, as plain JSON data.

Every step maps one `ImageState` to the next; the layer cache stores them by key, and the final
one becomes the image config and manifest written to the store.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from sandbox.oci import MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_MANIFEST, chain_ids

__all__ = ["ImageState", "timestamp"]


def timestamp(source_date_epoch: int | None = None) -> str:
    """RFC 3339 UTC time: now, or ``SOURCE_DATE_EPOCH`` when given."""
    when = time.time() if source_date_epoch is None else float(source_date_epoch)
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when))
    if source_date_epoch is not None:
        return whole + "Z"
    return f"{whole}.{int((when % 1) * 1e9):09d}Z"


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class ImageState:
    """An image being built (mutable only inside the step that made the copy)."""

    config: dict[str, Any] = field(default_factory=dict)
    """The image config's ``config`` object (Env, Cmd, Entrypoint, ...)."""
    diff_ids: list[str] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)
    """Manifest layer descriptors, one per diff id."""
    history: list[dict[str, Any]] = field(default_factory=list)
    architecture: str = "amd64"
    os: str = "linux"
    variant: str = ""
    author: str = ""
    base_id: str = ""
    """The image id (or ``scratch``) this state started from: part of the cache key."""

    def copy(self) -> ImageState:
        return copy.deepcopy(self)

    @property
    def chain_ids(self) -> list[str]:
        return chain_ids(self.diff_ids)

    @property
    def top_chain(self) -> str | None:
        chains = self.chain_ids
        return chains[-1] if chains else None

    def state_id(self) -> str:
        """A digest of everything later steps depend on (Docker's parent image id)."""
        return "sha256:" + hashlib.sha256(_canonical(self.to_dict())).hexdigest()

    def add_history(self, created_by: str, *, created: str, empty_layer: bool,
                    comment: str = "") -> None:
        entry: dict[str, Any] = {"created": created, "created_by": created_by}
        if comment:
            entry["comment"] = comment
        if empty_layer:
            entry["empty_layer"] = True
        self.history.append(entry)

    def add_layer(self, diff_id: str, descriptor: dict[str, Any]) -> None:
        self.diff_ids.append(diff_id)
        self.layers.append(descriptor)

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "diff_ids": self.diff_ids, "layers": self.layers,
                "history": self.history, "architecture": self.architecture, "os": self.os,
                "variant": self.variant, "author": self.author, "base_id": self.base_id}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageState:
        data = copy.deepcopy(data)
        return cls(config=dict(data.get("config") or {}), diff_ids=list(data["diff_ids"]),
                   layers=list(data["layers"]), history=list(data.get("history") or []),
                   architecture=str(data.get("architecture", "amd64")),
                   os=str(data.get("os", "linux")), variant=str(data.get("variant", "")),
                   author=str(data.get("author", "")), base_id=str(data.get("base_id", "")))

    @classmethod
    def from_image_config(cls, config: dict[str, Any], layers: list[dict[str, Any]],
                          base_id: str) -> ImageState:
        """The state of a stored image (the start of a stage ``FROM image``)."""
        return cls(config=copy.deepcopy(config.get("config") or {}),
                   diff_ids=list((config.get("rootfs") or {}).get("diff_ids") or []),
                   layers=[{k: v for k, v in layer.items() if k in ("mediaType", "digest",
                                                                    "size")}
                           for layer in layers],
                   history=copy.deepcopy(list(config.get("history") or [])),
                   architecture=str(config.get("architecture") or "amd64"),
                   os=str(config.get("os") or "linux"), variant=str(config.get("variant", "")),
                   author=str(config.get("author", "")), base_id=base_id)

    # -- the image ----------------------------------------------------------------------------
    def image_config(self) -> dict[str, Any]:
        """The OCI image config; ``created`` is the last history entry's time."""
        created = self.history[-1]["created"] if self.history else timestamp(0)
        out: dict[str, Any] = {"created": created, "architecture": self.architecture,
                               "os": self.os, "config": self.config,
                               "rootfs": {"type": "layers", "diff_ids": self.diff_ids},
                               "history": self.history}
        if self.variant:
            out["variant"] = self.variant
        if self.author:
            out["author"] = self.author
        return out

    def image_blobs(self) -> tuple[bytes, bytes]:
        """(config bytes, manifest bytes), canonical JSON."""
        config_bytes = _canonical(self.image_config())
        manifest = {
            "schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "config": {"mediaType": MEDIA_TYPE_OCI_CONFIG,
                       "digest": "sha256:" + hashlib.sha256(config_bytes).hexdigest(),
                       "size": len(config_bytes)},
            "layers": self.layers,
        }
        return config_bytes, _canonical(manifest)
