"""ImageStore against registries: pull (unpacked, verified, recorded last), push, gc, prune,
and every bad input ending in one clear error with nothing stored half."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest
from imagetest_helpers import broken_route, serve_image, store_state, tar_with
from registry_fixtures import FakeRegistry, Registries, make_image, make_index, send, store_with

from sandbox.errors import (
    DigestMismatch,
    ImageNotFound,
    RegistryError,
    SandboxError,
    StoreError,
    UnsafeLayerMember,
)
from sandbox.images import ImageStore
from sandbox.oci import Platform, digest_of
from sandbox.registry import RegistryClient
from sandbox.store import Store

pytestmark = pytest.mark.requires_userns

LAYERS = [{"bin/hello": b"hello\n", "etc/motd": b"base\n"},
          {"etc/motd": b"second\n", "opt/app/data": b"x" * 5000},
          {"opt/app/zstd-file": b"zstd layer\n"}]


def _layer_file(images: ImageStore, chain: str, rel: str) -> bytes:
    return (Path(images.store.layer_diff(chain)) / rel).read_bytes()


def test_pull_unpacks_every_layer_then_records_the_image(images: ImageStore, fake: FakeRegistry,
                                                         rc: RegistryClient) -> None:
    img = make_image(LAYERS, compressions=("gzip", "gzip", "zstd"))
    serve_image(fake, "lib/app", img, "1.0")
    image, changed = images.pull(f"{fake.host}/lib/app:1.0", client=rc)
    assert changed
    assert image.names == (f"{fake.host}/lib/app:1.0",)
    assert image.repo_digests == (f"{fake.host}/lib/app@{img.digest}",)
    assert image.manifest_digest == img.digest
    chains = image.chain_ids
    assert all(images.store.has_layer(c) for c in chains)
    assert _layer_file(images, chains[0], "bin/hello") == b"hello\n"
    assert _layer_file(images, chains[2], "opt/app/zstd-file") == b"zstd layer\n"
    assert store_state(Path(images.store.root))["tmp"] == []


def test_second_pull_asks_only_for_the_manifest(images: ImageStore, fake: FakeRegistry,
                                                rc: RegistryClient) -> None:
    img = make_image(LAYERS[:1])
    serve_image(fake, "lib/app", img)
    images.pull(f"{fake.host}/lib/app", client=rc)
    fake.seen.clear()
    image, changed = images.pull(f"{fake.host}/lib/app:latest", client=rc)
    assert not changed and image.manifest_digest == img.digest
    assert [p for m, p, _ in fake.seen if "/blobs/" in p] == []


def test_pull_of_a_multi_arch_index_picks_the_platform(images: ImageStore, fake: FakeRegistry,
                                                       rc: RegistryClient) -> None:
    amd = make_image([{"arch": b"amd64"}], arch="amd64")
    arm = make_image([{"arch": b"arm64"}], arch="arm64", variant="v8")
    raw, _ = make_index([(amd, {"os": "linux", "architecture": "amd64"}),
                         (arm, {"os": "linux", "architecture": "arm64", "variant": "v8"})])
    serve_image(fake, "multi", amd, index=raw)
    serve_image(fake, "multi", arm, index=raw)
    image, _ = images.pull(f"{fake.host}/multi", client=rc,
                           platform=Platform(os="linux", architecture="arm64", variant="v8"))
    assert image.config["architecture"] == "arm64"
    assert image.repo_digests == (f"{fake.host}/multi@{digest_of(raw)}",)
    assert images.store.has_blob(digest_of(raw))  # kept for RepoDigests
    assert images.get(f"{fake.host}/multi@{digest_of(raw)}").id == image.id


def test_pull_by_digest_records_no_tag(images: ImageStore, fake: FakeRegistry,
                                       rc: RegistryClient) -> None:
    img = make_image(LAYERS[:1])
    serve_image(fake, "lib/app", img)
    image, _ = images.pull(f"{fake.host}/lib/app@{img.digest}", client=rc)
    assert image.names == () and image.dangling
    assert images.get(f"{fake.host}/lib/app@{img.digest}").id == image.id


def test_a_corrupt_blob_is_refused_and_nothing_is_stored(images: ImageStore, fake: FakeRegistry,
                                                         rc: RegistryClient) -> None:
    img = make_image(LAYERS[:2])
    bad = json.loads(img.manifest)["layers"][1]["digest"]
    serve_image(fake, "lib/app", img, corrupt=bad)
    with pytest.raises(DigestMismatch):
        images.pull(f"{fake.host}/lib/app", client=rc)
    state = store_state(Path(images.store.root))
    assert bad[7:] not in state["blobs"] and state["tmp"] == [] and state["names"] == []
    assert state["layers"] == []


def test_a_truncated_stream_fails_after_retries(images: ImageStore, fake: FakeRegistry,
                                                rc: RegistryClient) -> None:
    img = make_image([{"big": os.urandom(200_000)}])
    serve_image(fake, "lib/app", img)
    layer = json.loads(img.manifest)["layers"][0]["digest"]
    fake.routes[("GET", f"/v2/lib/app/blobs/{layer}")] = broken_route(img.blobs[layer], 1000)
    with pytest.raises(RegistryError, match="truncated|broke|connection"):
        images.pull(f"{fake.host}/lib/app", client=rc)
    state = store_state(Path(images.store.root))
    assert state["tmp"] == [] and state["names"] == [] and layer[7:] not in state["blobs"]


def test_manifest_unknown_is_image_not_found(images: ImageStore, fake: FakeRegistry,
                                             rc: RegistryClient) -> None:
    with pytest.raises(ImageNotFound, match="not found"):
        images.pull(f"{fake.host}/nothing/here:1", client=rc)


def test_malformed_manifest_json(images: ImageStore, fake: FakeRegistry,
                                 rc: RegistryClient) -> None:
    fake.routes[("GET", "/v2/bad/manifests/latest")] = lambda req: send(
        req, 200, b"{not json", {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    with pytest.raises(SandboxError, match="JSON|json"):
        images.pull(f"{fake.host}/bad", client=rc)


def test_unknown_layer_media_type(images: ImageStore, fake: FakeRegistry,
                                  rc: RegistryClient) -> None:
    img = make_image(LAYERS[:1])
    manifest = json.loads(img.manifest)
    manifest["layers"][0]["mediaType"] = "application/x-weird"
    img.manifest = json.dumps(manifest).encode()
    serve_image(fake, "weird", img)
    with pytest.raises(RegistryError, match="unsupported layer media type"):
        images.pull(f"{fake.host}/weird", client=rc)


def test_connection_refused_says_so(images: ImageStore, rc: RegistryClient) -> None:
    from registry_fixtures import free_port

    port = free_port()
    with pytest.raises(RegistryError) as info:
        images.pull(f"127.0.0.1:{port}/x/y:1", client=rc)
    line = info.value.one_line()
    assert "\n" not in line
    assert "refused" in line.lower() and f"127.0.0.1:{port}" in line, line
    assert store_state(Path(images.store.root))["tmp"] == []


def test_a_hostile_layer_leaves_no_half_layer_and_no_image(images: ImageStore,
                                                           fake: FakeRegistry,
                                                           rc: RegistryClient) -> None:
    img = make_image(LAYERS[:1])
    evil = tar_with([("etc", None), ("../../escape", b"owned")])
    import gzip

    blob = gzip.compress(evil)
    cfg = json.loads(img.config)
    cfg["rootfs"]["diff_ids"].append(digest_of(evil))
    config = json.dumps(cfg).encode()
    manifest = json.loads(img.manifest)
    manifest["config"].update(digest=digest_of(config), size=len(config))
    manifest["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                               "digest": digest_of(blob), "size": len(blob)})
    img.manifest, img.config = json.dumps(manifest).encode(), config
    img.blobs.update({digest_of(blob): blob, digest_of(config): config})
    serve_image(fake, "evil", img)
    with pytest.raises(UnsafeLayerMember):
        images.pull(f"{fake.host}/evil", client=rc)
    state = store_state(Path(images.store.root))
    assert state["names"] == [] and state["tmp"] == []
    assert len(state["layers"]) <= 1  # the harmless first layer may stay, shared and complete
    assert not (Path(images.store.root).parent / "escape").exists()


def test_a_lying_diff_id_is_refused(images: ImageStore, fake: FakeRegistry,
                                    rc: RegistryClient) -> None:
    img = make_image(LAYERS[:1])
    cfg = json.loads(img.config)
    cfg["rootfs"]["diff_ids"] = ["sha256:" + "ab" * 32]
    config = json.dumps(cfg).encode()
    manifest = json.loads(img.manifest)
    manifest["config"].update(digest=digest_of(config), size=len(config))
    img.manifest, img.config = json.dumps(manifest).encode(), config
    img.blobs[digest_of(config)] = config
    serve_image(fake, "liar", img)
    with pytest.raises(DigestMismatch, match="diff|config"):
        images.pull(f"{fake.host}/liar", client=rc)
    state = store_state(Path(images.store.root))
    assert state["layers"] == [] and state["names"] == [] and state["tmp"] == []


def test_disk_full_is_one_clear_error(images: ImageStore, fake: FakeRegistry,
                                      rc: RegistryClient, monkeypatch: pytest.MonkeyPatch) -> None:
    img = make_image(LAYERS[:1])
    serve_image(fake, "lib/app", img)
    images.store.ensure()
    import sandbox.store as store_mod

    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f: object) -> None:
            self.f = f

        def __enter__(self) -> Full:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()  # type: ignore[attr-defined]

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store_mod.os, "fdopen",
                        lambda fd, *a, **k: Full(real_fdopen(fd, *a, **k)))
    with pytest.raises(StoreError, match="no space left"):
        images.pull(f"{fake.host}/lib/app", client=rc)
    monkeypatch.undo()
    assert store_state(Path(images.store.root))["tmp"] == []


def test_clean_tmp_removes_only_what_dead_processes_left(images: ImageStore) -> None:
    store = images.store.ensure()
    tmp = Path(store.tmp_dir)
    mine = tmp / f"p{os.getpid()}-live.blob"
    mine.write_bytes(b"in progress")
    dead = tmp / "p999999999-dead.blob"
    dead.write_bytes(b"left by SIGKILL")
    (tmp / "p999999998-dead.layer").mkdir()
    images.clean_tmp()
    assert sorted(os.listdir(tmp)) == [mine.name]


def test_clean_tmp_counts_a_zombie_as_dead(images: ImageStore) -> None:
    """A killed puller whose parent died stays a zombie until PID 1 reaps it, and some PID 1s
    (containers, CI sandboxes) never do: its temp files are stale all the same."""
    import subprocess
    import sys
    import time

    store = images.store.ensure()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # exited, not reaped: a zombie
            with open(f"/proc/{child.pid}/stat", "rb") as f:
                if f.read().rpartition(b")")[2].split()[0] == b"Z":
                    break
            time.sleep(0.01)
        left = Path(store.tmp_dir) / f"p{child.pid}-killed.layer"
        left.mkdir()
        images.clean_tmp()
        assert not left.exists()
    finally:
        child.wait()


def test_rmi_collects_blobs_and_layers_but_keeps_shared_ones(images: ImageStore,
                                                             fake: FakeRegistry,
                                                             rc: RegistryClient) -> None:
    one = make_image(LAYERS[:1])
    two = make_image(LAYERS[:2])  # same first layer
    serve_image(fake, "one", one)
    serve_image(fake, "two", two)
    a, _ = images.pull(f"{fake.host}/one", client=rc)
    b, _ = images.pull(f"{fake.host}/two", client=rc)
    assert a.chain_ids[0] == b.chain_ids[0]
    images.remove(f"{fake.host}/one")
    assert images.store.has_layer(b.chain_ids[0]) and images.store.has_blob(
        b.layers[0]["digest"])
    images.remove(f"{fake.host}/two")
    state = store_state(Path(images.store.root))
    assert state["blobs"] == [] and state["layers"] == []


def test_prune_removes_dangling_then_all(images: ImageStore, fake: FakeRegistry,
                                         rc: RegistryClient) -> None:
    old = make_image([{"v": b"1"}])
    new = make_image([{"v": b"2"}])
    serve_image(fake, "app", old)
    images.pull(f"{fake.host}/app", client=rc)
    serve_image(fake, "app", new)
    images.pull(f"{fake.host}/app", client=rc)
    dangling = [i for i in images.list() if i.dangling]
    assert len(dangling) == 1
    lines, reclaimed = images.prune()
    assert any(line.startswith("deleted: ") for line in lines) and reclaimed > 0
    assert len(images.list()) == 1
    images.prune(all_images=True)
    assert images.list() == []
    assert store_state(Path(images.store.root))["blobs"] == []


@pytest.mark.requires_registry
def test_push_then_pull_through_a_real_registry_with_mounts(
        images: ImageStore, registries: Registries, rc: RegistryClient, tmp_path: Path) -> None:
    reg = registries.anon()
    img = make_image(LAYERS, compressions=("gzip", "zstd", "none"))
    src = store_with(tmp_path / "src", img.blobs)
    rc.push(f"{reg.host}/src/app:1", src, img.digest)
    image, _ = images.pull(f"{reg.host}/src/app:1", client=rc)
    images.tag(image, f"{reg.host}/dst/app:2")

    class Record:
        def __init__(self) -> None:
            self.done: list[str] = []

        def start(self, digest: str, size: int | None, status: str) -> None:
            pass

        def update(self, digest: str, done: int) -> None:
            pass

        def finish(self, digest: str, status: str) -> None:
            self.done.append(status)

    progress = Record()
    digest = images.push(f"{reg.host}/dst/app:2", client=rc, progress=progress)
    assert digest == img.digest
    assert progress.done and all(s.startswith("Mounted from src/app") for s in progress.done)
    again = ImageStore(Store(tmp_path / "other"))
    pulled, _ = again.pull(f"{reg.host}/dst/app:2", client=rc)
    assert pulled.id == image.id
    assert f"{reg.host}/dst/app@{digest}" in images.get(f"{reg.host}/dst/app:2").repo_digests


@pytest.mark.requires_registry
def test_unauthorized_pull_says_to_log_in(images: ImageStore, registries: Registries,
                                          rc: RegistryClient) -> None:
    reg = registries.basic()
    with pytest.raises(RegistryError) as info:
        images.pull(f"{reg.host}/private/app:1", client=rc)
    assert f"sandbox login {reg.host}" in info.value.one_line()


@pytest.mark.requires_registry
def test_tls_failure_names_the_host_and_the_fix(images: ImageStore, registries: Registries,
                                                auth_env: Path) -> None:
    reg = registries.tls()
    with RegistryClient(secure=[reg.host], retries=0) as verified, \
            pytest.raises(RegistryError) as info:
        images.pull(f"{reg.host}/x/y:1", client=verified)
    line = info.value.one_line()
    assert "TLS failure" in line and f"certs.d/{reg.host}/ca.crt" in line
    assert store_state(Path(images.store.root))["names"] == []


def _sha512_image(files: list[dict[str, bytes]]) -> Any:
    """An image whose config, layers and diff ids are all named by sha512 digests."""
    import gzip
    import hashlib

    from registry_fixtures import Image, make_tar

    def d512(data: bytes) -> str:
        return "sha512:" + hashlib.sha512(data).hexdigest()

    tars = [make_tar(f) for f in files]
    blobs = [gzip.compress(t, mtime=0) for t in tars]
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [d512(t) for t in tars]}
                         }).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": d512(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": d512(b), "size": len(b)} for b in blobs]}).encode()
    img = Image(manifest, "application/vnd.oci.image.manifest.v1+json", config, blobs)
    img.blobs = {d512(b): b for b in [config, *blobs]}
    img.blobs[digest_of(manifest)] = manifest
    return img


def test_sha512_digests_are_verified_and_stored(images: ImageStore, fake: FakeRegistry,
                                                rc: RegistryClient, tmp_path: Path) -> None:
    from sandbox import archive

    img = _sha512_image([{"etc/one": b"1\n"}, {"etc/two": b"2\n"}])
    serve_image(fake, "lib/sha512", img)
    image, _ = images.pull(f"{fake.host}/lib/sha512", client=rc)
    assert image.id.startswith("sha512:") and image.diff_ids[0].startswith("sha512:")
    assert _layer_file(images, image.chain_ids[0], "etc/one") == b"1\n"
    assert _layer_file(images, image.chain_ids[1], "etc/two") == b"2\n"
    root = Path(images.store.root)
    assert len(os.listdir(root / "blobs" / "sha512")) == 3
    for fmt in ("docker-archive", "oci-archive"):
        out = tmp_path / f"{fmt}.tar"
        with open(out, "wb") as f:
            archive.save(images, [f"{fake.host}/lib/sha512"], f, fmt=fmt)
        (loaded,) = archive.load(ImageStore(Store(tmp_path / fmt)), str(out))
        assert loaded.diff_ids == image.diff_ids
    images.remove(f"{fake.host}/lib/sha512")
    assert os.listdir(root / "blobs" / "sha512") == [] and os.listdir(root / "layers") == []
    # a corrupt sha512 blob is caught like a sha256 one
    bad = json.loads(img.manifest)["layers"][1]["digest"]
    serve_image(fake, "lib/bad512", img, corrupt=bad)
    with pytest.raises(DigestMismatch):
        images.pull(f"{fake.host}/lib/bad512", client=rc)


def test_an_unknown_digest_algorithm_is_one_clear_line(images: ImageStore) -> None:
    with pytest.raises(StoreError, match="unsupported digest algorithm 'md5'") as info:
        images.store.blob_path("md5:" + "0" * 32)
    assert "sha256 and sha512" in info.value.one_line()


def _stored(images: ImageStore, files: dict[str, bytes], name: str) -> Any:
    img = make_image([files])
    for data in img.blobs.values():
        if data is not img.manifest:
            images.store.put_blob(data)
    return images.add(img.manifest, [name])


def test_get_by_name_reads_only_the_image_named(images: ImageStore,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    wanted = _stored(images, {"a": b"1"}, "wanted:1")
    for i in range(5):
        _stored(images, {"b": str(i).encode()}, f"other{i}:1")
    loaded: list[str] = []
    real = ImageStore._load

    def counting(self: ImageStore, digest: str, *a: Any) -> Any:
        loaded.append(digest)
        return real(self, digest, *a)

    monkeypatch.setattr(ImageStore, "_load", counting)
    assert images.get("wanted:1").id == wanted.id
    assert loaded == [wanted.manifest_digest]


def test_a_name_wins_over_an_id_prefix_as_in_docker(images: ImageStore) -> None:
    first = _stored(images, {"a": b"1"}, "x:1")
    prefix = first.id[7:11]
    named = _stored(images, {"b": b"2"}, f"{prefix}:latest")
    assert images.get(prefix).id == named.id          # the name
    assert images.get(first.id[7:19]).id == first.id  # an id prefix no name has
    with pytest.raises(ImageNotFound):
        images.get("nosuchimage")
