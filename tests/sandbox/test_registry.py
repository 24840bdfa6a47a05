"""The registry client against a real Distribution registry (anonymous access)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from registry_fixtures import (
    CuttingProxy,
    DirStore,
    Registries,
    make_image,
    make_index,
    random_image,
    store_with,
    write_oci_layout,
)

from sandbox import oci
from sandbox._progress import LineProgress
from sandbox.errors import ImageNotFound, RegistryError
from sandbox.oci import Platform, digest_of
from sandbox.reference import parse_reference
from sandbox.registry import RegistryClient

pytestmark = pytest.mark.requires_registry


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, object]] = []

    def start(self, digest: str, size: int | None, status: str) -> None:
        self.events.append(("start", digest, status))

    def update(self, digest: str, done: int) -> None:
        pass

    def finish(self, digest: str, status: str) -> None:
        self.events.append(("finish", digest, status))

    def statuses(self) -> set[str]:
        return {str(e[2]) for e in self.events if e[0] == "finish"}


def push_image(client: RegistryClient, tmp_path: Path, ref: str, img_blobs: dict[str, bytes],
               manifest_digest: str, **kw: object) -> str:
    src = store_with(tmp_path / f"src-{manifest_digest[7:19]}", img_blobs)
    return client.push(ref, src, manifest_digest, **kw)  # type: ignore[arg-type]


def check_pulled(store: DirStore, blobs: dict[str, bytes], result_layers: object) -> None:
    for desc in result_layers:  # type: ignore[attr-defined]
        assert store.read(desc.digest) == blobs[desc.digest]


def test_push_then_pull_gzip_and_zstd(registries: Registries, client: RegistryClient,
                                      store: DirStore, tmp_path: Path) -> None:
    reg = registries.anon()
    img = random_image([300_000, 5_000, 70_000], seed=1, compressions=("gzip", "zstd", "none"))
    ref = f"{reg.host}/test/roundtrip:v1"
    assert push_image(client, tmp_path, ref, img.blobs, img.digest) == img.digest
    progress = Recorder()
    res = client.pull(ref, store, progress=progress)
    assert res.manifest_digest == img.digest
    assert res.manifest_bytes == img.manifest
    assert res.config_bytes == img.config
    assert res.config_digest == digest_of(img.config)
    assert res.index_digest is None
    assert [d.media_type for d in res.layers] == [
        oci.MEDIA_TYPE_OCI_LAYER_GZIP, oci.MEDIA_TYPE_OCI_LAYER_ZSTD, oci.MEDIA_TYPE_OCI_LAYER]
    check_pulled(store, img.blobs, res.layers)
    assert store.has_blob(res.config_digest)
    assert progress.statuses() == {"Pull complete"}
    # A second pull downloads nothing.
    store.ingested.clear()
    again = Recorder()
    res2 = client.pull(ref, store, progress=again)
    assert store.ingested == [] and again.statuses() == {"Already exists"}
    assert res2.manifest_digest == img.digest
    # By digest, and with tag+digest.
    assert client.pull(f"{reg.host}/test/roundtrip@{img.digest}", store).manifest_digest \
        == img.digest
    data, mt, digest = client.get_manifest(f"{reg.host}/test/roundtrip:v1@{img.digest}")
    assert (data, mt, digest) == (img.manifest, oci.MEDIA_TYPE_OCI_MANIFEST, img.digest)


def test_docker_media_types_and_manifest_list(registries: Registries, client: RegistryClient,
                                              store: DirStore, tmp_path: Path) -> None:
    reg = registries.anon()
    amd = random_image([20_000], seed=2, docker=True)
    arm = random_image([20_000], seed=3, docker=True, arch="arm64", variant="v8")
    raw, blobs = make_index([(amd, {"os": "linux", "architecture": "amd64"}),
                             (arm, {"os": "linux", "architecture": "arm64", "variant": "v8"})],
                            docker=True)
    ref = f"{reg.host}/test/dockerlist:1"
    push_image(client, tmp_path, ref, blobs, digest_of(raw))
    res = client.pull(ref, store, platform=Platform("linux", "arm64"))
    assert res.manifest_digest == arm.digest
    assert res.manifest_media_type == oci.MEDIA_TYPE_DOCKER_MANIFEST
    assert res.index_digest == digest_of(raw)
    assert res.index_media_type == oci.MEDIA_TYPE_DOCKER_MANIFEST_LIST
    check_pulled(store, blobs, res.layers)


def test_multi_arch_index_platform_selection(registries: Registries, client: RegistryClient,
                                             tmp_path: Path) -> None:
    reg = registries.anon()
    imgs = {
        "amd64": random_image([1000], seed=10),
        "arm64": random_image([1000], seed=11, arch="arm64", variant="v8"),
        "armv7": random_image([1000], seed=12, arch="arm", variant="v7"),
    }
    raw, blobs = make_index([
        (imgs["amd64"], {"os": "linux", "architecture": "amd64"}),
        (imgs["arm64"], {"os": "linux", "architecture": "arm64", "variant": "v8"}),
        (imgs["armv7"], {"os": "linux", "architecture": "arm", "variant": "v7"}),
    ])
    ref = f"{reg.host}/test/multi:latest"
    push_image(client, tmp_path, ref, blobs, digest_of(raw))
    for plat, want in [("linux/amd64", "amd64"), ("linux/arm64", "arm64"),
                       ("linux/arm64/v8", "arm64"), ("linux/arm/v7", "armv7"),
                       ("linux/arm", "armv7")]:
        data, _mt, digest, top = client.resolve(ref, oci.parse_platform(plat))
        assert digest == imgs[want].digest, plat
        assert top is not None and top[2] == digest_of(raw)
    with pytest.raises(RegistryError, match="no image for platform linux/s390x.*offered"):
        client.resolve(ref, oci.parse_platform("linux/s390x"))
    # The index itself, as stored.
    data, mt, digest = client.get_manifest(ref)
    assert (data, mt, digest) == (raw, oci.MEDIA_TYPE_OCI_INDEX, digest_of(raw))


def test_chunked_upload_mount_and_existing(registries: Registries, auth_env: Path,
                                           store: DirStore, tmp_path: Path) -> None:
    reg = registries.anon()
    img = random_image([200_000, 50_000], seed=20)
    with RegistryClient(chunk_size=64 * 1024, backoff=0.01) as chunked:
        push_image(chunked, tmp_path, f"{reg.host}/test/chunked:1", img.blobs, img.digest)
        res = chunked.pull(f"{reg.host}/test/chunked:1", store)
        check_pulled(store, img.blobs, res.layers)
        # Cross-repository mount into another repository.
        rec = Recorder()
        push_image(chunked, tmp_path / "2", f"{reg.host}/test/mounted:1", img.blobs,
                   img.digest, progress=rec, mount_from=["test/chunked"])
        assert {s for s in rec.statuses()} == {"Mounted from test/chunked"}
        # Pushing again finds every blob there.
        rec2 = Recorder()
        push_image(chunked, tmp_path / "3", f"{reg.host}/test/mounted:2", img.blobs,
                   img.digest, progress=rec2)
        assert rec2.statuses() == {"Layer already exists"}
        assert sorted(chunked.list_tags(f"{reg.host}/test/mounted")) == ["1", "2"]


def test_list_tags_paginates(registries: Registries, client: RegistryClient,
                             tmp_path: Path) -> None:
    reg = registries.anon()
    img = make_image([{"a": b"a"}])
    src = store_with(tmp_path / "src", img.blobs)
    for tag in ("t1", "t2", "t3", "t4", "t5"):
        client.push(f"{reg.host}/test/tags:{tag}", src, img.digest)
    # Distribution 2.8 ignores ?n= (pagination is tested against the fake registry).
    assert sorted(client.list_tags(f"{reg.host}/test/tags", page_size=2)) == [
        "t1", "t2", "t3", "t4", "t5"]
    with pytest.raises(ImageNotFound, match="repository .*nothere not found"):
        client.list_tags(f"{reg.host}/test/nothere")


def test_errors_are_one_line(registries: Registries, client: RegistryClient,
                             store: DirStore) -> None:
    reg = registries.anon()
    with pytest.raises(ImageNotFound, match=f"manifest for {reg.host}/test/missing:nope not "
                                            "found: manifest unknown"):
        client.pull(f"{reg.host}/test/missing:nope", store)
    with pytest.raises(RegistryError, match=f"registry {reg.host} does not offer search"):
        client.search("ubuntu", registry=reg.host)
    with pytest.raises(RegistryError, match=r"blob sha256:0+ not found"):
        client.fetch_blob(f"{reg.host}/test/missing", "sha256:" + "0" * 64, store)


def test_connection_refused_names_host(auth_env: Path, store: DirStore) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with RegistryClient(retries=0) as c, pytest.raises(
            RegistryError, match=f"cannot connect to registry 127.0.0.1:{port}: connection "
                                 "refused"):
        c.pull(f"127.0.0.1:{port}/x/y", store)


def test_resume_after_broken_connection(registries: Registries, client: RegistryClient,
                                        store: DirStore, tmp_path: Path) -> None:
    reg = registries.anon()
    img = random_image([1_500_000], seed=30, compressions=("none",))
    push_image(client, tmp_path, f"{reg.host}/test/resume:1", img.blobs, img.digest)
    proxy = CuttingProxy(reg.port, after=400_000, cuts=2)
    try:
        res = client.pull(f"127.0.0.1:{proxy.port}/test/resume:1", store)
    finally:
        proxy.stop()
    assert proxy.cut_count == 2
    check_pulled(store, img.blobs, res.layers)
    assert store.ingested.count(res.layers[0].digest) == 1


def test_tls_registry(registries: Registries, auth_env: Path, store: DirStore,
                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = registries.tls()
    img = make_image([{"tls": b"secure"}])
    # Loopback is insecure by default (as Docker): unverified TLS works.
    with RegistryClient(backoff=0.01) as c:
        push_image(c, tmp_path, f"{reg.host}/test/tls:1", img.blobs, img.digest)
    # Verified: fails naming the host and the fix ...
    with RegistryClient(secure=[reg.host], retries=0) as c, pytest.raises(
            RegistryError, match=f"TLS failure talking to registry {reg.host}") as info:
        c.pull(f"{reg.host}/test/tls:1", store)
    assert f"certs.d/{reg.host}/ca.crt" in (info.value.hint or "")
    # ... and works with the CA in a certs.d directory.
    certs = tmp_path / "certs.d" / reg.host
    certs.mkdir(parents=True)
    assert reg.ca is not None
    shutil.copy(reg.ca, certs / "ca.crt")
    monkeypatch.setenv("SANDBOX_CERTS_D", str(tmp_path / "certs.d"))
    with RegistryClient(secure=[reg.host], retries=0) as c:
        assert c.pull(f"{reg.host}/test/tls:1", store).manifest_digest == img.digest


needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")


@needs_skopeo
def test_skopeo_pushed_image_pulls(registries: Registries, client: RegistryClient,
                                   store: DirStore, tmp_path: Path) -> None:
    reg = registries.anon()
    img = random_image([100_000, 3_000], seed=40, compressions=("gzip", "zstd"))
    layout = tmp_path / "layout"
    write_oci_layout(layout, img.blobs, img.manifest, img.media_type, "v1")
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                    f"oci:{layout}:v1", f"docker://{reg.host}/skopeo/img:v1"],
                   check=True, capture_output=True, env=_skopeo_env(tmp_path))
    res = client.pull(f"{reg.host}/skopeo/img:v1", store)
    assert res.config_bytes == img.config
    check_pulled(store, img.blobs, res.layers)


@needs_skopeo
def test_our_push_reads_back_with_skopeo(registries: Registries, client: RegistryClient,
                                         tmp_path: Path) -> None:
    reg = registries.anon()
    img = random_image([50_000], seed=41)
    push_image(client, tmp_path, f"{reg.host}/ours/img:v1", img.blobs, img.digest)
    out = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                          f"docker://{reg.host}/ours/img:v1"], check=True, capture_output=True,
                         env=_skopeo_env(tmp_path))
    assert out.stdout == img.manifest
    dest = tmp_path / "copy"
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                    f"docker://{reg.host}/ours/img:v1", f"oci:{dest}:v1"],
                   check=True, capture_output=True, env=_skopeo_env(tmp_path))
    index = json.loads((dest / "index.json").read_text())
    assert index["manifests"][0]["digest"] == img.digest


def _skopeo_env(tmp_path: Path) -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["HOME"] = str(tmp_path / "skopeo-home")
    env.pop("XDG_RUNTIME_DIR", None)
    return env


def test_progress_lines(registries: Registries, client: RegistryClient, store: DirStore,
                        tmp_path: Path) -> None:
    import io

    reg = registries.anon()
    img = random_image([10_000, 20_000], seed=50)
    push_image(client, tmp_path, f"{reg.host}/test/progress:1", img.blobs, img.digest)
    out = io.StringIO()
    client.pull(f"{reg.host}/test/progress:1", store, progress=LineProgress(out))
    lines = out.getvalue().splitlines()
    for layer in img.layers:
        short = digest_of(layer)[7:19]
        assert f"{short}: Pull complete" in lines
        assert any(line.startswith(f"{short}: Downloading") for line in lines)
    assert parse_reference(f"{reg.host}/test/progress:1").domain == reg.host


def test_pull_into_content_store(registries: Registries, client: RegistryClient,
                                 tmp_path: Path) -> None:
    """The real ``sandbox.store.Store`` satisfies BlobSink/BlobSource (pull, then push back)."""
    store_mod = pytest.importorskip("sandbox.store")
    reg = registries.anon()
    img = random_image([30_000, 40_000], seed=80, compressions=("gzip", "zstd"))
    push_image(client, tmp_path, f"{reg.host}/test/store:1", img.blobs, img.digest)
    content = store_mod.Store(tmp_path / "root")
    res = client.pull(f"{reg.host}/test/store:1", content)
    for desc in res.layers:
        assert content.read_blob(desc.digest) == img.blobs[desc.digest]
    content.ingest_blob(res.manifest_digest, [res.manifest_bytes], size=len(res.manifest_bytes))
    assert client.push(f"{reg.host}/test/store-copy:1", content, res.manifest_digest,
                       mount_from=["test/store"]) == img.digest
