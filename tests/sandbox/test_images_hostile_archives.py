"""Hostile image archives fed to ``archive.load``: names that point out of the archive or the
layout directory, symlinks and hard links where files should be, digests that are paths, and a
hostile layer inside an otherwise good docker-archive. Each is refused with one line, nothing
outside is touched and the store is left as it was (no image, blob, layer or temp file)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from imagetest_helpers import store_state, tar_with
from registry_fixtures import make_image, make_tar, write_oci_layout

from sandbox import archive
from sandbox.errors import SandboxError
from sandbox.images import ImageStore
from sandbox.oci import digest_of
from sandbox.store import Store

pytestmark = pytest.mark.requires_userns


@pytest.fixture
def images(tmp_path: Path) -> ImageStore:
    return ImageStore(Store(tmp_path / "root"))


def _docker_archive(path: Path, layers: list[bytes], *, manifest: list[dict] | None = None,
                    extra: Callable[[tarfile.TarFile], None] | None = None) -> None:
    """A Docker 25+ style archive of uncompressed ``layers``; ``manifest`` replaces its
    manifest.json; ``extra`` adds members."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers",
                                    "diff_ids": [digest_of(t) for t in layers]}}).encode()
    with tarfile.open(path, "w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add(f"blobs/sha256/{digest_of(config)[7:]}", config)
        for layer in layers:
            add(f"blobs/sha256/{digest_of(layer)[7:]}", layer)
        if extra:
            extra(tar)
        add("manifest.json", json.dumps(manifest or [{
            "Config": f"blobs/sha256/{digest_of(config)[7:]}", "RepoTags": ["evil:1"],
            "Layers": [f"blobs/sha256/{digest_of(t)[7:]}" for t in layers]}]).encode())


def _refused(images: ImageStore, src: str, match: str, tmp_path: Path) -> str:
    images.store.ensure()
    before = set(os.listdir(tmp_path))
    with pytest.raises(SandboxError, match=match) as info:
        archive.load(images, src)
    line = info.value.one_line()
    assert "\n" not in line
    state = store_state(Path(images.store.root))
    assert state == {"blobs": [], "layers": [], "tmp": [], "names": []}, state
    assert set(os.listdir(tmp_path)) == before  # nothing written beside the store
    return line


def test_manifest_json_config_pointing_out_of_the_archive(images: ImageStore,
                                                          tmp_path: Path) -> None:
    src = tmp_path / "a.tar"
    _docker_archive(src, [make_tar({"f": b"1"})],
                    manifest=[{"Config": "../../../../etc/passwd", "RepoTags": ["evil:1"],
                               "Layers": []}])
    _refused(images, str(src), "etc/passwd is missing from the archive", tmp_path)


def test_manifest_json_layer_pointing_out_of_the_archive(images: ImageStore,
                                                         tmp_path: Path) -> None:
    layer = make_tar({"f": b"1"})
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [digest_of(layer)]}}).encode()
    src = tmp_path / "a.tar"
    _docker_archive(src, [layer], manifest=[{
        "Config": f"blobs/sha256/{digest_of(config)[7:]}", "Layers": ["/etc/passwd"]}],
        extra=lambda tar: tar.addfile(_info(f"blobs/sha256/{digest_of(config)[7:]}",
                                            len(config)), io.BytesIO(config)))
    _refused(images, str(src), "is missing from the archive", tmp_path)


def _info(name: str, size: int = 0, *, kind: bytes = tarfile.REGTYPE, link: str = ""
          ) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname = size, kind, link
    return info


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_manifest_json_that_is_a_link_to_a_host_file(kind: bytes, images: ImageStore,
                                                     tmp_path: Path) -> None:
    src = tmp_path / "a.tar"
    with tarfile.open(src, "w") as tar:
        tar.addfile(_info("manifest.json", kind=kind, link="/etc/passwd"))
    _refused(images, str(src), "manifest.json is not a regular file", tmp_path)


def test_a_hostile_layer_inside_a_docker_archive(images: ImageStore, tmp_path: Path) -> None:
    """The first layer is fine and gets unpacked; the second escapes: both go again."""
    good = make_tar({"etc/ok": b"fine"})
    evil = tar_with([("../../../escaped", b"owned")])
    src = tmp_path / "a.tar"
    _docker_archive(src, [good, evil])
    _refused(images, str(src), "escaped", tmp_path)
    assert not (tmp_path / "escaped").exists()


def test_index_json_with_a_digest_that_is_a_path(images: ImageStore, tmp_path: Path) -> None:
    src = tmp_path / "a.tar"
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:../../../../etc/passwd", "size": 10}]}).encode()
    with tarfile.open(src, "w") as tar:
        tar.addfile(_info("index.json", len(index)), io.BytesIO(index))
        tar.addfile(_info("oci-layout", 2), io.BytesIO(b"{}"))
    _refused(images, str(src), "invalid digest", tmp_path)


def test_oci_layout_dir_with_a_layer_digest_that_is_a_path(images: ImageStore,
                                                           tmp_path: Path) -> None:
    img = make_image([{"f": b"1"}])
    manifest = json.loads(img.manifest)
    manifest["layers"][0]["digest"] = "sha256:../../../outside"
    raw = json.dumps(manifest).encode()
    layout = tmp_path / "layout"
    write_oci_layout(layout, {**img.blobs, digest_of(raw): raw}, raw, img.media_type)
    (tmp_path / "outside").write_bytes(img.layers[0])
    _refused(images, str(layout), "invalid digest", tmp_path)


def test_oci_layout_dir_whose_blob_is_a_symlink_out_of_it(images: ImageStore,
                                                          tmp_path: Path) -> None:
    img = make_image([{"f": b"1"}])
    layout = tmp_path / "layout"
    write_oci_layout(layout, img.blobs, img.manifest, img.media_type)
    layer = layout / "blobs" / "sha256" / digest_of(img.layers[0])[7:]
    outside = tmp_path / "outside-layer"
    outside.write_bytes(layer.read_bytes())
    layer.unlink()
    layer.symlink_to(outside)
    _refused(images, str(layout), "outside the layout", tmp_path)


def test_oci_layout_dir_whose_blob_is_a_device(images: ImageStore, tmp_path: Path) -> None:
    """A symlink to /dev/zero inside the layout would be read forever: it is refused."""
    img = make_image([{"f": b"1"}])
    layout = tmp_path / "layout"
    write_oci_layout(layout, img.blobs, img.manifest, img.media_type)
    layer = layout / "blobs" / "sha256" / digest_of(img.layers[0])[7:]
    layer.unlink()
    os.symlink("/dev/zero", layout / "zero")
    layer.symlink_to("../../zero")
    _refused(images, str(layout), "outside the layout|not a regular file", tmp_path)


def test_docker_archive_in_a_layout_dir_naming_a_parent_path(images: ImageStore,
                                                             tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    layout.mkdir()
    (tmp_path / "config.json").write_text("{}")
    (layout / "manifest.json").write_text(json.dumps([{"Config": "../config.json",
                                                        "Layers": []}]))
    _refused(images, str(layout), "outside the layout", tmp_path)
