"""Pulls and loads racing ``rmi``, ``prune`` and garbage collection: whichever order they land
in, every recorded image is complete (its blobs and layers present) and no call fails for a
reason the other one made up.

The first tests force the worst interleaving: the other process's ``rmi`` (with its garbage
collection) runs at the exact point where a pull has decided what the store holds."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from imagetest_helpers import serve_image, store_state
from registry_fixtures import FakeRegistry, make_image

from sandbox import _pull
from sandbox.images import Image, ImageStore
from sandbox.registry import RegistryClient
from sandbox.store import Store

pytestmark = pytest.mark.requires_userns

LAYERS = [{"bin/tool": b"tool\n"}, {"etc/conf": b"conf\n"}]


def _meanwhile(action: Callable[[], object], wait: float = 2.0) -> threading.Thread:
    """Run ``action`` (another process's command, on its own lock fds) and give it ``wait``
    seconds: long enough to finish unless a lock of ours rightly holds it back."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(wait)
    t.errors = errors  # type: ignore[attr-defined]
    return t


def _assert_consistent(root: Path) -> None:
    """Every index entry loads: its manifest, config and layer blobs are all present."""
    store = Store(root)
    entries = store.load_index()["manifests"]
    loaded = ImageStore(store).list()
    assert len({e["digest"] for e in entries}) == len(loaded), (entries, loaded)
    for image in loaded:
        for layer in image.layers:
            assert store.has_blob(layer["digest"]), layer
        for chain in image.chain_ids:
            assert store.has_layer(chain), chain


def test_pull_by_digest_while_rmi_removes_the_image_it_matched(
        images: ImageStore, fake: FakeRegistry, rc: RegistryClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    img = make_image(LAYERS)
    serve_image(fake, "lib/app", img)
    tagged = f"{fake.host}/lib/app:latest"
    images.pull(tagged, client=rc)
    other = ImageStore(Store(images.store.root))  # another process's view
    real_add = images.add
    threads: list[threading.Thread] = []

    def add_after_rmi(*args: Any, **kwargs: Any) -> Image:
        threads.append(_meanwhile(lambda: other.remove(tagged, force=True)))
        return real_add(*args, **kwargs)
    monkeypatch.setattr(images, "add", add_after_rmi)
    image, _ = images.pull(f"{fake.host}/lib/app@{img.digest}", client=rc)
    assert threads, "the pull did not take the known-manifest path"
    threads[0].join(10)
    assert not threads[0].is_alive() and not threads[0].errors  # type: ignore[attr-defined]
    assert image.manifest_digest == img.digest
    _assert_consistent(Path(images.store.root))
    assert images.get(f"{fake.host}/lib/app@{img.digest}").id == image.id


def test_up_to_date_pull_while_rmi_removes_the_image(
        images: ImageStore, fake: FakeRegistry, rc: RegistryClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    img = make_image(LAYERS)
    serve_image(fake, "lib/app", img)
    tagged = f"{fake.host}/lib/app:latest"
    images.pull(tagged, client=rc)
    other = ImageStore(Store(images.store.root))
    real = _pull._up_to_date

    def then_rmi(*args: Any) -> Image | None:
        found = real(*args)
        _meanwhile(lambda: other.remove(tagged, force=True), wait=10)
        return found
    monkeypatch.setattr(_pull, "_up_to_date", then_rmi)
    image, changed = images.pull(tagged, client=rc)  # up to date when it looked: no error
    assert not changed and image.manifest_digest == img.digest
    _assert_consistent(Path(images.store.root))


_WORKER = r"""
import sys, time
from sandbox.errors import ImageNotFound
from sandbox.images import ImageStore
from sandbox.store import Store
from sandbox import archive

root, role, tagged, by_digest, saved = sys.argv[1:6]
images = ImageStore(Store(root))
deadline = time.monotonic() + 60
for i in range(6):
    if role == "pull":
        images.pull(tagged)
        images.pull(by_digest)
    elif role == "load":
        with open(saved, "rb") as f:
            archive.load(images, f)
    elif role == "rmi":
        for name in (tagged, "loaded/app:1"):
            try:
                images.remove(name, force=True)
            except ImageNotFound:
                pass
    elif role == "prune":
        images.prune(all_images=True)
        images.gc()
print("ok")
"""


def test_pulls_and_loads_racing_rmi_prune_and_gc_leave_a_consistent_store(
        images: ImageStore, fake: FakeRegistry, rc: RegistryClient, tmp_path: Path) -> None:
    import subprocess
    import sys

    from sandbox import archive

    img = make_image([*LAYERS, {"opt/big": bytes(range(256)) * 2000}])
    serve_image(fake, "lib/app", img, delay=0.05)
    tagged, by_digest = f"{fake.host}/lib/app:latest", f"{fake.host}/lib/app@{img.digest}"
    seed = ImageStore(Store(tmp_path / "seed"))
    seed.pull(tagged, client=rc)
    seed.tag(seed.get(tagged), "loaded/app:1")
    saved = tmp_path / "saved.tar"
    with open(saved, "wb") as out:
        archive.save(seed, ["loaded/app:1"], out)
    root = images.store.root
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, root, role, tagged, by_digest,
                               str(saved)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for role in ("pull", "pull", "load", "rmi", "prune")]
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0 and out == "ok\n", err[-3000:]
    _assert_consistent(Path(root))
    assert store_state(Path(root))["tmp"] == []
    images.pull(tagged, client=rc)
    _assert_consistent(Path(root))
    images.prune(all_images=True)
    state = store_state(Path(root))
    assert state["blobs"] == [] and state["layers"] == []
