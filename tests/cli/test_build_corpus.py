"""Every Dockerfile of ``tests/build_corpus`` built from busybox with ``sandbox build``.

Each case directory holds a Dockerfile, its context and ``expected.json``: build args and tags,
the image config fields the Dockerfile sets, the layer count, and commands whose output the
image must give under ``sandbox run``.
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
    for created_by, empty in expected.get("history_tail", []):
        last = image.config["history"][-1]
        assert (last["created_by"], bool(last.get("empty_layer"))) == (created_by, empty)
    for name, content in expected.get("files", {}).items():
        assert _layer_files(session_store, image.layers[-1]["digest"])[name] == content.encode()
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
