"""docker-archive and OCI archives: round trips, other tools' archives, compression, several
images per archive, and broken archives refused with nothing stored."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard
from imagetest_helpers import store_state
from registry_fixtures import make_image, write_oci_layout

from sandbox import archive
from sandbox.errors import DigestMismatch, SandboxError
from sandbox.images import ImageStore
from sandbox.store import Store

pytestmark = pytest.mark.requires_userns

LAYERS = [{"bin/tool": b"tool\n"}, {"etc/conf": b"conf\n"}]


@pytest.fixture
def images(tmp_path: Path) -> ImageStore:
    return ImageStore(Store(tmp_path / "root"))


def _loaded_from_oci(images: ImageStore, tmp_path: Path, name: str = "example.com/app:1"):
    img = make_image(LAYERS, compressions=("gzip", "zstd"))
    layout = tmp_path / "layout"
    write_oci_layout(layout, img.blobs, img.manifest, img.media_type, tag=name)
    return img, archive.load(images, str(layout))


def test_load_oci_layout_dir(images: ImageStore, tmp_path: Path) -> None:
    img, loaded = _loaded_from_oci(images, tmp_path)
    assert [i.names for i in loaded] == [("example.com/app:1",)]
    assert loaded[0].manifest_digest == img.digest
    assert all(images.store.has_layer(c) for c in loaded[0].chain_ids)


@pytest.mark.parametrize("fmt", archive.FORMATS)
def test_save_then_load_round_trip_keeps_the_image_id(fmt: str, images: ImageStore,
                                                      tmp_path: Path) -> None:
    _, (image,) = _loaded_from_oci(images, tmp_path)
    out = tmp_path / "saved.tar"
    with open(out, "wb") as f:
        archive.save(images, ["example.com/app:1"], f, fmt=fmt)
    other = ImageStore(Store(tmp_path / "other"))
    (back,) = archive.load(other, str(out))
    assert back.id == image.id and back.names == ("example.com/app:1",)
    for chain in back.chain_ids:
        assert other.store.has_layer(chain)
    if fmt == "oci-archive":
        assert back.manifest_digest == image.manifest_digest


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_load_compressed_archive_from_a_stream(compression: str, images: ImageStore,
                                               tmp_path: Path) -> None:
    _loaded_from_oci(images, tmp_path)
    buf = io.BytesIO()
    archive.save(images, ["example.com/app:1"], buf)
    data = gzip.compress(buf.getvalue()) if compression == "gzip" else \
        zstandard.ZstdCompressor().compress(buf.getvalue())
    other = ImageStore(Store(tmp_path / "other"))
    (back,) = archive.load(other, io.BufferedReader(io.BytesIO(data)))  # type: ignore[arg-type]
    assert back.names == ("example.com/app:1",)
    assert store_state(tmp_path / "other")["tmp"] == []


def test_several_images_in_one_archive(images: ImageStore, tmp_path: Path) -> None:
    _, (first,) = _loaded_from_oci(images, tmp_path)
    second = make_image([{"other": b"2"}])
    layout = tmp_path / "layout2"
    write_oci_layout(layout, second.blobs, second.manifest, second.media_type,
                     tag="example.com/two:2")
    archive.load(images, str(layout))
    images.tag(first, "example.com/app:alias")
    out = tmp_path / "both.tar"
    with open(out, "wb") as f:
        archive.save(images, ["example.com/app:1", "example.com/two:2",
                              "example.com/app:alias"], f)
    with tarfile.open(out) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert sorted(t for e in manifest for t in e["RepoTags"]) == [
        "example.com/app:1", "example.com/app:alias", "example.com/two:2"]
    other = ImageStore(Store(tmp_path / "other"))
    loaded = archive.load(other, str(out))
    assert sorted(n for i in loaded for n in i.names) == [
        "example.com/app:1", "example.com/app:alias", "example.com/two:2"]


def _classic_docker_archive(path: Path) -> tuple[str, list[bytes]]:
    """``docker save`` before Docker 25: <id>/layer.tar, <config>.json, a symlinked layer."""
    from registry_fixtures import make_tar

    from sandbox.oci import digest_of

    tars = [make_tar({"a": b"1"}), make_tar({"b": b"2"})]
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers",
                                    "diff_ids": [digest_of(t) for t in tars]}}).encode()
    cfg_hex = digest_of(config)[7:]
    with tarfile.open(path, "w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add(f"{cfg_hex}.json", config)
        add("l1/layer.tar", tars[0])
        add("l2/layer.tar", tars[1])
        link = tarfile.TarInfo("l3/layer.tar")
        link.type, link.linkname = tarfile.SYMTYPE, "../l1/layer.tar"
        tar.addfile(link)
        add("manifest.json", json.dumps([{"Config": f"{cfg_hex}.json",
                                          "RepoTags": ["classic:old"],
                                          "Layers": ["l1/layer.tar", "l2/layer.tar"]}]).encode())
        add("repositories", b'{"classic":{"old":"l2"}}')
    return "sha256:" + cfg_hex, tars


def test_load_classic_docker_archive(images: ImageStore, tmp_path: Path) -> None:
    image_id, _ = _classic_docker_archive(tmp_path / "classic.tar")
    (image,) = archive.load(images, str(tmp_path / "classic.tar"))
    assert image.id == image_id and image.names == ("docker.io/library/classic:old",)
    assert (Path(images.store.layer_diff(image.chain_ids[1])) / "b").read_bytes() == b"2"


def test_a_layer_that_lies_about_its_diff_id_is_refused(images: ImageStore,
                                                        tmp_path: Path) -> None:
    path = tmp_path / "classic.tar"
    _classic_docker_archive(path)
    with tarfile.open(path) as tar:
        members = {m.name: (m, tar.extractfile(m).read() if m.isfile() else None)  # type: ignore
                   for m in tar.getmembers()}
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as out:
        for name, (info, data) in members.items():
            if name == "l2/layer.tar":
                data = data[:-1024] + b"\1" * 1024  # type: ignore[index]
            out.addfile(info, io.BytesIO(data) if data is not None else None)
    with pytest.raises(DigestMismatch):
        archive.load(images, str(bad))
    assert store_state(tmp_path / "root")["names"] == []


@pytest.mark.parametrize("content,match", [
    (b"this is not a tar archive at all" * 40, "not a tar archive"),
    (None, "neither manifest.json nor index.json"),
])
def test_broken_archives_are_one_line_errors(content: bytes | None, match: str,
                                             images: ImageStore, tmp_path: Path) -> None:
    path = tmp_path / "broken.tar"
    if content is None:
        with tarfile.open(path, "w") as tar:
            info = tarfile.TarInfo("hello")
            tar.addfile(info, io.BytesIO(b""))
    else:
        path.write_bytes(content)
    with pytest.raises(SandboxError, match=match) as info:
        archive.load(images, str(path))
    assert "\n" not in info.value.one_line()
    assert store_state(tmp_path / "root")["names"] == []


def test_a_missing_blob_stores_no_image(images: ImageStore, tmp_path: Path) -> None:
    img = make_image(LAYERS)
    layout = tmp_path / "layout"
    write_oci_layout(layout, img.blobs, img.manifest, img.media_type, tag="example.com/x:1")
    layer = json.loads(img.manifest)["layers"][1]["digest"]
    (layout / "blobs" / "sha256" / layer[7:]).unlink()
    with pytest.raises(SandboxError, match="missing"):
        archive.load(images, str(layout))
    assert store_state(tmp_path / "root")["names"] == []


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")
@pytest.mark.parametrize("fmt", archive.FORMATS)
def test_skopeo_reads_our_archives_and_we_read_its(fmt: str, images: ImageStore,
                                                   tmp_path: Path) -> None:
    _, (image,) = _loaded_from_oci(images, tmp_path)
    ours = tmp_path / "ours.tar"
    with open(ours, "wb") as f:
        archive.save(images, ["example.com/app:1"], f, fmt=fmt)
    info = json.loads(subprocess.run(["skopeo", "inspect", f"{fmt}:{ours}"], check=True,
                                     capture_output=True, text=True).stdout)
    assert len(info["Layers"]) == 2
    # (skopeo cannot write zstd layers into a docker-archive: copy OCI to an OCI layout dir)
    theirs = tmp_path / ("theirs.tar" if fmt == "docker-archive" else "theirs-layout")
    dest = "oci-archive" if fmt == "docker-archive" else "oci"
    subprocess.run(["skopeo", "copy", "-q", f"{fmt}:{ours}",
                    f"{dest}:{theirs}:example.com/copied:2"], check=True, capture_output=True)
    other = ImageStore(Store(tmp_path / "other"))
    (back,) = archive.load(other, str(theirs))
    assert back.names == ("example.com/copied:2",) and back.diff_ids == image.diff_ids


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("podman") is None, reason="podman not installed")
def test_podman_loads_our_docker_archive(images: ImageStore, tmp_path: Path) -> None:
    _, (image,) = _loaded_from_oci(images, tmp_path)
    ours = tmp_path / "ours.tar"
    with open(ours, "wb") as f:
        archive.save(images, ["example.com/app:1"], f)
    import tempfile

    short = Path(tempfile.mkdtemp(prefix="sbx-arch-"))  # podman: runroot under 50 characters
    run = short / "run"
    run.mkdir()
    base = ["podman", "--root", str(tmp_path / "proot"), "--runroot", str(short / "prun"),
            "--storage-driver", "vfs"]
    env = {**__import__("os").environ, "XDG_RUNTIME_DIR": str(run)}
    try:
        proc = subprocess.run([*base, "load", "-i", str(ours)], capture_output=True, text=True,
                              env=env, check=False, timeout=120)
        if proc.returncode != 0 and "newuidmap" in proc.stderr + proc.stdout:
            pytest.skip(f"rootless podman unusable here: {proc.stderr.strip()[-200:]}")
        assert proc.returncode == 0, proc.stderr
        assert "example.com/app:1" in proc.stdout
        listed = subprocess.run([*base, "images", "--format", "{{.ID}}"], capture_output=True,
                                text=True, env=env, check=True).stdout
        assert image.id[7:19] in listed
    finally:
        subprocess.run([*base, "unshare", "rm", "-rf", str(tmp_path / "proot"),
                        str(short / "prun")], capture_output=True, env=env, check=False)
        _stop_podman_pause(run)
        shutil.rmtree(short, ignore_errors=True)


def _stop_podman_pause(run_dir: Path) -> None:
    """Rootless podman leaves a pause process per XDG_RUNTIME_DIR: end ours (by its pid)."""
    import os
    import signal

    try:
        pid = int((run_dir / "libpod" / "tmp" / "pause.pid").read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
