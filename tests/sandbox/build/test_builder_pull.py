"""``sandbox build --pull`` against a loopback fake registry."""

from __future__ import annotations

from pathlib import Path

import pytest
from registry_fixtures import FakeRegistry, make_image, serve_bytes

from sandbox.oci import digest_of

pytestmark = pytest.mark.requires_userns


def _serve(fake: FakeRegistry, repo: str, files: dict[str, bytes]) -> str:
    img = make_image([files])
    for digest, data in img.blobs.items():
        fake.routes[("GET", f"/v2/{repo}/blobs/{digest}")] = serve_bytes(data)
    route = serve_bytes(img.manifest, img.media_type,
                        {"Docker-Content-Digest": digest_of(img.manifest)})
    fake.routes[("GET", f"/v2/{repo}/manifests/latest")] = route
    fake.routes[("GET", f"/v2/{repo}/manifests/{img.digest}")] = route
    return img.digest


def test_a_missing_base_is_pulled_and_pull_refreshes_it(auth_env: Path, fake: FakeRegistry,
                                                        cli, tmp_path: Path,
                                                        session_store: Path) -> None:
    _serve(fake, "r/base", {"hello.txt": b"pulled\n"})
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {fake.host}/r/base\nCOPY local.txt /\n")
    (ctx / "local.txt").write_text("local\n")
    proc = cli("build", "-t", "onpulled", str(ctx), timeout=120)  # as docker build: pulled
    assert proc.returncode == 0, proc.stderr
    assert f"Pulling {fake.host}/r/base" in proc.stdout
    from sandbox.images import ImageStore
    from sandbox.store import Store

    image = ImageStore(Store(session_store)).get("onpulled")
    assert image.config["config"]["Env"] == ["PATH=/bin"]
    assert len(image.diff_ids) == 2
    again = cli("build", str(ctx), timeout=120)  # now in the store: not pulled again
    assert again.returncode == 0 and "Pulling" not in again.stdout
    proc = cli("build", "--pull", "-t", "onpulled", str(ctx), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"Pulling {fake.host}/r/base" in proc.stdout


def test_a_base_neither_local_nor_pullable_is_one_line(auth_env: Path, fake: FakeRegistry,
                                                       cli, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {fake.host}/r/missing:1\nRUN true\n")
    proc = cli("build", str(ctx), timeout=120)
    assert proc.returncode == 125
    assert proc.stderr.startswith(f"sandbox: Dockerfile:1: unable to find image "
                                  f"'{fake.host}/r/missing:1' locally, and pulling it failed: ")
    assert proc.stderr.count("\n") == 1
    assert "Running in" not in proc.stdout
