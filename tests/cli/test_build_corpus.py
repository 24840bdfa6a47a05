"""Every Dockerfile of ``tests/build_corpus`` built from busybox with ``sandbox build``.

Each case directory holds a Dockerfile, its context and ``expected.json``: build args and tags,
the image config fields the Dockerfile sets, the layer count, the last history entries
(``created_by``, ``empty_layer``), entries a layer must have or lack (``layer_entries``, by
layer index: whiteouts and opaque-dir markers) and commands whose output the image must give
under ``sandbox run``.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from sandbox.runtime.idmap import detect_mapping

CORPUS = Path(__file__).resolve().parent.parent / "build_corpus"
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "Dockerfile").is_file())

pytestmark = pytest.mark.requires_userns


def _image(store: Path, name: str) -> Any:
    from sandbox.images import ImageStore
    from sandbox.store import Store

    return ImageStore(Store(store)).get(name)


def _layer_files(store: Path, digest: str) -> dict[str, bytes]:
    blob = store / "blobs" / "sha256" / digest.removeprefix("sha256:")
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob.read_bytes()))) as tar:
        for member in tar:
            f = tar.extractfile(member) if member.isfile() else None
            out[member.name] = f.read() if f else b""
    return out


def _matches(pattern: str, text: str) -> bool:
    """``*`` in ``pattern`` stands for a content hash (64 hex digits); the rest is literal."""
    import re

    return re.fullmatch("[0-9a-f]{64}".join(map(re.escape, pattern.split("*"))), text) is not None


@pytest.mark.parametrize("case", CASES)
def test_corpus_builds_and_runs(case: str, cli, busybox_image: str, session_store: Path) -> None:
    expected = json.loads((CORPUS / case / "expected.json").read_text())
    tag = expected["tags"][0]
    argv = ["build", "-t", tag]
    for key, value in expected.get("build_args", {}).items():
        argv += ["--build-arg", f"{key}={value}"]
    proc = cli(*argv, str(CORPUS / case), timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Successfully tagged {tag}" in proc.stdout
    for word in expected.get("not_built", []):
        assert word not in proc.stdout
    image = _image(session_store, tag)
    config = image.config["config"]
    for key, value in expected.get("config", {}).items():
        assert config.get(key) == value, key
    if "author" in expected:
        assert image.config["author"] == expected["author"]
    base_layers = 0 if "scratch" in case else 1
    if "layers" in expected:
        assert len(image.diff_ids) - base_layers == expected["layers"]
    assert len(image.layers) == len(image.diff_ids)
    assert sum(not h.get("empty_layer") for h in image.config["history"]) == len(image.diff_ids)
    tail = expected.get("history_tail", [])
    if tail:
        history = image.config["history"][-len(tail):]
        assert len(history) == len(tail)
        for entry, (pattern, empty) in zip(history, tail, strict=True):
            assert _matches(pattern, entry["created_by"]), (pattern, entry["created_by"])
            assert bool(entry.get("empty_layer")) == empty, entry
    for name, content in expected.get("files", {}).items():
        assert _layer_files(session_store, image.layers[-1]["digest"])[name] == content.encode()
    for index, names in expected.get("layer_entries", {}).items():
        members = set(_layer_files(session_store, image.layers[int(index)]["digest"]))
        assert set(names.get("has", [])) <= members, (index, sorted(members))
        assert not set(names.get("lacks", [])) & members, (index, sorted(members))
    single = detect_mapping().mode != "subuid"
    for check in expected.get("run", []):
        run = ["run", "--rm"]
        if single and check.get("needs_subuid"):
            continue  # USER 1000 cannot run where only uid 0 is mapped
        if single and expected.get("run_as_root_in_single_mode"):
            run += ["-u", "0"]
        if "entrypoint" in check:
            run += ["--entrypoint", check["entrypoint"]]
        proc = cli(*run, tag, *check["argv"])
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == check["stdout"]
