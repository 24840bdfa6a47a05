"""The build cache: step results by key, persisted under ``$SANDBOX_ROOT/build-cache/``.

Keys follow Docker's classic builder: the parent (the state the step starts from, which names
its base image and layer chain), the instruction after expansion, and what the instruction
reads (the build args a RUN sees, the content of the files a COPY/ADD copies). An entry is the
whole `ImageState` after the step; its layer blobs stay in the content store, so an entry whose
blobs were garbage-collected is a miss.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import Any

from sandbox.build._image_state import ImageState
from sandbox.store import Store

__all__ = ["BuildCache", "cache_key"]

_DIR = "build-cache"


def cache_key(parent: str, *parts: Any) -> str:
    """The key of a step: ``parent`` (a state id) and the step's description."""
    h = hashlib.sha256(parent.encode())
    h.update(json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode())
    return h.hexdigest()


class BuildCache:
    """Step results by key; ``disabled`` (``--no-cache``) never reads but still writes."""

    def __init__(self, store: Store, *, disabled: bool = False) -> None:
        self.store = store
        self.disabled = disabled
        self.root = store.path(_DIR)

    def _path(self, key: str) -> str:
        return os.path.join(self.root, key[:2], key + ".json")

    def get(self, key: str) -> ImageState | None:
        if self.disabled:
            return None
        try:
            with open(self._path(key), "rb") as f:
                data = json.loads(f.read())
            state = ImageState.from_dict(data["state"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not all(self.store.has_blob(layer["digest"]) for layer in state.layers):
            return None
        return state

    def put(self, key: str, state: ImageState) -> None:
        path = self._path(key)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        data = json.dumps({"state": state.to_dict()}, sort_keys=True).encode()
        self.store.atomic_write(path, data)
        self.store.set_gc_root(f"build-cache-{key}", (layer["digest"] for layer in state.layers))

    def entries(self) -> list[str]:
        out: list[str] = []
        with contextlib.suppress(FileNotFoundError):
            for sub in sorted(os.listdir(self.root)):
                if len(sub) != 2:
                    continue  # replay/, mounts/
                subdir = os.path.join(self.root, sub)
                with contextlib.suppress(NotADirectoryError, FileNotFoundError):
                    out += [os.path.join(subdir, n) for n in sorted(os.listdir(subdir))
                            if n.endswith(".json")]
        return out

    def referenced_blobs(self) -> set[str]:
        found: set[str] = set()
        for path in self.entries():
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                with open(path, "rb") as f:
                    found.update(layer["digest"] for layer in
                                 json.loads(f.read())["state"]["layers"])
        return found

    def prune(self) -> int:
        """Remove every entry (``builder prune``); returns how many there were."""
        paths = self.entries()
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self.store.remove_gc_roots("build-cache-")
        mounts = os.path.join(self.root, "mounts")
        if os.path.isdir(mounts):
            self.store.rm_rf(mounts)
        return len(paths)
