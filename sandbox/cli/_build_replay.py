"""``sandbox build``'s no-change rebuild: replay a whole build from a record, parsing nothing.

(It lives beside the CLI, not in ``sandbox.build``, because importing any module of that
package imports the Dockerfile front end, which is the cost this module avoids.)

A rebuild where nothing changed gets every step from the layer cache; what is left is the cost
of starting Python and importing the Dockerfile front end (a hundred frozen dataclasses). So a
successful build also writes a record keyed by everything the build was asked for (Dockerfile
text, build args, target, platform, labels, network, ``SOURCE_DATE_EPOCH``, context path), with
a stat signature of the whole context (names, types, modes, sizes, mtimes: any change, even to
an ignored file, falls back to the real build), the base images it resolved (name and manifest
digest: a re-tagged base falls back) and the lines a fully cached build prints. Replaying checks
those, re-tags if needed and prints the lines. This module imports nothing heavy on purpose.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os

from sandbox.store import Store

TYPE_CHECKING = False  # no ``typing`` import at run time (start-up cost, as in _args.py)
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

__all__ = ["ReplayKey", "ReplayRecord", "context_signature", "sign_context", "outside_inputs",
           "load_record", "save_record", "check_record", "RACY_NS"]

_DIR = ("build-cache", "replay")
_REF_ANNOTATION = "org.opencontainers.image.ref.name"
_VERSION = 2
"""Part of every key: a builder whose results change (2: ADD stops extracting downloads,
proxy args leave the cache key) does not replay an older builder's records."""


class ReplayKey:
    """Everything a build was asked for (plain class: ``dataclasses`` costs start-up time)."""

    __slots__ = ("dockerfile_text", "dockerfile_name", "context", "build_args", "target",
                 "platform", "labels", "network", "source_date_epoch")

    def __init__(self, dockerfile_text: str, dockerfile_name: str, context: str | None,
                 build_args: Mapping[str, str] | None = None, target: str | None = None,
                 platform: str | None = None, labels: Mapping[str, str] | None = None,
                 network: str = "none", source_date_epoch: int | None = None) -> None:
        self.dockerfile_text = dockerfile_text
        self.dockerfile_name = dockerfile_name
        self.context = context
        self.build_args = dict(build_args or {})
        self.target = target
        self.platform = platform
        self.labels = dict(labels or {})
        self.network = network
        self.source_date_epoch = source_date_epoch

    def digest(self) -> str:
        data = {"version": _VERSION, "dockerfile": self.dockerfile_text,
                "name": self.dockerfile_name,
                "context": self.context, "build_args": dict(sorted(self.build_args.items())),
                "target": self.target, "platform": self.platform,
                "labels": dict(sorted(self.labels.items())), "network": self.network,
                "sde": self.source_date_epoch}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


class ReplayRecord:
    """What a finished build leaves for its no-change rebuild."""

    __slots__ = ("context_signature", "bases", "manifest_digest", "image_id", "lines", "names")

    def __init__(self, context_signature: str, bases: tuple[tuple[str, str], ...],
                 manifest_digest: str, image_id: str, lines: tuple[str, ...],
                 names: dict[str, str] | None = None) -> None:
        self.context_signature = context_signature
        self.bases = bases
        """(normalised name or "" for an id, manifest digest) of every image read."""
        self.manifest_digest = manifest_digest
        self.image_id = image_id
        self.lines = lines
        """What a fully cached build prints, up to (not including) "Successfully built"."""
        self.names = dict(names or {})
        """``-t`` values of the recorded build and their normalised names (so a replay with
        the same tags need not import the reference parser)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReplayRecord) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__)

    __hash__ = None  # type: ignore[assignment]


RACY_NS = 200_000_000
"""A context entry changed less than this before its signature was taken may change again
within the same file-time tick without changing its signature (git's "racy" entries): such a
build leaves no record, so the next one goes through the builder, which hashes content."""


def sign_context(context: str | None, extra: Sequence[str] = ()) -> tuple[str, int]:
    """(digest of the stat data of every entry under ``context`` and of the ``extra`` paths,
    the newest change time seen in ns). No content is read: names, types, modes, sizes,
    inode numbers, mtimes and ctimes (which no one can set back) are."""
    h = hashlib.sha256()
    newest = 0
    if context is None:
        return "none", 0

    def sign(label: str, path: str) -> None:
        nonlocal newest
        try:
            st = os.lstat(path)
        except OSError:
            h.update(f"{label}\0missing\n".encode("utf-8", "surrogateescape"))
            return
        newest = max(newest, st.st_mtime_ns, st.st_ctime_ns)
        h.update(f"{label}\0{st.st_mode}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0"
                 f"{st.st_ino}\n".encode("utf-8", "surrogateescape"))

    sign(".", context)
    for dirpath, dirnames, filenames in os.walk(context):
        dirnames.sort()
        rel = os.path.relpath(dirpath, context)
        for name in sorted(filenames) + dirnames:
            sign(f"{rel}/{name}", os.path.join(dirpath, name))
    for path in extra:
        sign(f"extra:{path}", path)
    return h.hexdigest(), newest


def context_signature(context: str | None, extra: Sequence[str] = ()) -> str:
    """The digest of `sign_context`."""
    return sign_context(context, extra)[0]


def outside_inputs(key: ReplayKey) -> list[str]:
    """Files outside the context the build reads by name: ``<Dockerfile>.dockerignore`` when
    ``-f`` names a Dockerfile outside the context."""
    if key.context is None:
        return []
    path = os.path.normpath(os.path.join(key.context, key.dockerfile_name + ".dockerignore"))
    inside = path.startswith(key.context.rstrip("/") + "/")
    return [] if inside else [path]


def _path(store: Store, key: ReplayKey) -> str:
    return store.path(*_DIR, key.digest() + ".json")


def save_record(store: Store, key: ReplayKey, record: ReplayRecord) -> None:
    path = _path(store, key)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    data = {"context_signature": record.context_signature,
            "bases": [list(b) for b in record.bases],
            "manifest_digest": record.manifest_digest, "image_id": record.image_id,
            "lines": list(record.lines), "names": record.names}
    store.atomic_write(path, json.dumps(data).encode())


def load_record(store: Store, key: ReplayKey) -> ReplayRecord | None:
    try:
        with open(_path(store, key), "rb") as f:
            data: dict[str, Any] = json.loads(f.read())
        return ReplayRecord(str(data["context_signature"]),
                            tuple((str(n), str(d)) for n, d in data["bases"]),
                            str(data["manifest_digest"]), str(data["image_id"]),
                            tuple(str(line) for line in data["lines"]),
                            {str(k): str(v) for k, v in (data.get("names") or {}).items()})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _blobs_present(store: Store, record: ReplayRecord) -> bool:
    try:
        manifest = json.loads(store.read_blob(record.manifest_digest))
        digests = [manifest["config"]["digest"]] + [layer["digest"]
                                                   for layer in manifest["layers"]]
    except Exception:  # noqa: BLE001 - any problem means: build for real
        return False
    return manifest["config"]["digest"] == record.image_id and all(
        store.has_blob(d) for d in digests)


def check_record(store: Store, key: ReplayKey) -> tuple[ReplayRecord, list[dict[str, Any]]
                                                        ] | None:
    """The record of ``key`` if it still describes the build; with the index entries."""
    record = load_record(store, key)
    if record is None or record.context_signature != context_signature(
            key.context, outside_inputs(key)):
        return None
    entries = list(store.load_index().get("manifests", []))
    for name, digest in record.bases:
        if not any(e.get("digest") == digest and (not name or (e.get("annotations") or {}).get(
                _REF_ANNOTATION) == name) for e in entries):
            return None
    if not _blobs_present(store, record):
        return None
    return record, entries


def needs_tagging(entries: Sequence[dict[str, Any]], manifest_digest: str,
                  names: Sequence[str]) -> bool:
    tagged = {(e.get("annotations") or {}).get(_REF_ANNOTATION) for e in entries
              if e.get("digest") == manifest_digest}
    if not names:
        return manifest_digest not in {e.get("digest") for e in entries}
    return not set(names) <= tagged


def remove_records(store: Store) -> int:
    root = store.path(*_DIR)
    count = 0
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(root):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(root, name))
                count += 1
    return count
