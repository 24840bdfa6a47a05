"""The image commands' finer shapes, as Docker has them: ``images -a`` and intermediate images,
``--filter dangling=true`` with a real dangling image, ``inspect`` of an image, ``rmi`` of an
image a container uses (with and without ``-f``, stopped and running) or that several
repositories name, ``history`` rows, and ``pull --platform`` of a multi-arch index."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sandbox"))

from imagetest_helpers import Sandbox, serve_image  # noqa: E402
from registry_fixtures import FakeRegistry, make_image, make_index  # noqa: E402

pytestmark = pytest.mark.requires_userns


@pytest.fixture
def sb(tmp_path: Path, busybox_tar: Path) -> Sandbox:
    s = Sandbox(tmp_path)
    s("import", "-c", 'CMD ["/bin/sh"]', str(busybox_tar), "base:1")
    return s


def _tar(path: Path, files: dict[str, bytes]) -> str:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def _ids(sb: Sandbox, *args: str) -> list[str]:
    return sb("images", "-q", *args).stdout.split()


def _id(sb: Sandbox, ref: str) -> str:
    (obj,) = json.loads(sb("image", "inspect", ref).stdout)
    return str(obj["Id"])


def test_images_all_shows_intermediate_images_and_dangling_ones_show_by_default(
        sb: Sandbox, tmp_path: Path) -> None:
    sb("run", "--name", "c", "base:1", "sh", "-c", "echo child > /added")
    sb("commit", "c", "child:1")
    sb("rm", "c")
    parent = _id(sb, "base:1")[7:19]
    sb("tag", "child:1", "base:1")  # the old base loses its name: child builds on it
    child = _id(sb, "child:1")[7:19]
    assert _ids(sb) == [child]
    table = sb("images", "-a").stdout.splitlines()
    assert [r.split()[:3] for r in table[1:] if r.startswith("<none>")] == [
        ["<none>", "<none>", parent]]
    assert sorted(_ids(sb, "-a")) == sorted([child, parent])
    assert _ids(sb, "--filter", "dangling=true") == []  # intermediate is not dangling
    assert _ids(sb, "-a", "--filter", "dangling=true") == []
    # a real dangling image: a name moved to another, unrelated image
    sb("import", _tar(tmp_path / "one.tar", {"v": b"1"}), "other:1")
    first = _id(sb, "other:1")[7:19]
    sb("import", _tar(tmp_path / "two.tar", {"v": b"2"}), "other:1")
    assert _ids(sb, "--filter", "dangling=true") == [first]
    assert _ids(sb, "--filter", "dangling=false") == [_id(sb, "other:1")[7:19], child]
    assert first in _ids(sb)
    out = sb("image", "prune", "-f").stdout
    assert f"deleted: {first}" not in out and first not in _ids(sb, "-a")
    assert parent in _ids(sb, "-a")  # prune keeps the intermediate image
    assert sb("run", "--rm", "child:1", "cat", "/added").stdout == "child\n"


def test_plain_inspect_of_an_image_is_the_image_inspect_document(sb: Sandbox) -> None:
    image = json.loads(sb("image", "inspect", "base:1").stdout)
    assert json.loads(sb("inspect", "base:1").stdout) == image
    assert json.loads(sb("inspect", "--type", "image", "base:1").stdout) == image
    assert sb("inspect", "-f", "{{.Os}} {{.RootFS.Type}}", "base:1").stdout == "linux layers\n"
    sb("tag", "base:1", "shadow")
    sb("create", "--name", "shadow", "base:1")
    # a container named like the image wins without --type, as in Docker
    assert "State" in json.loads(sb("inspect", "shadow").stdout)[0]
    assert json.loads(sb("inspect", "--type", "image", "shadow").stdout)[0]["Id"] == \
        image[0]["Id"]
    proc = sb("inspect", "--type", "container", "base:1", ok=False)
    assert proc.returncode == 1 and proc.stderr == "sandbox: no such container: base:1\n"
    proc = sb("inspect", "--type", "image", "nothing", ok=False)
    assert proc.returncode == 1 and proc.stderr == "sandbox: no such image: nothing\n"
    assert "not a valid value for --type" in sb.fails("inspect", "--type", "thing", "base:1")


def test_rmi_of_a_missing_image_says_so_and_goes_on(sb: Sandbox) -> None:
    proc = sb("rmi", "nothing:here", "base:1", ok=False)
    assert proc.returncode == 1
    assert proc.stderr == "sandbox: no such image: nothing:here\n"
    assert proc.stdout.startswith("Untagged: base:1\n")


def test_rmi_of_an_image_a_container_uses(sb: Sandbox) -> None:
    image_id = _id(sb, "base:1")
    short = image_id[7:19]
    sb("create", "--name", "user", "base:1")
    cid = sb("inspect", "-f", "{{.Id}}", "user").stdout.strip()[:12]
    line = sb.fails("rmi", "base:1", code=1)
    assert line.startswith(f'sandbox: conflict: unable to remove repository reference "base:1" '
                           f"(must force) - container {cid} is using its referenced image "
                           f"{short} (")
    line = sb.fails("rmi", short, code=1)
    assert line.startswith(f"sandbox: conflict: unable to delete {short} (must be forced) - "
                           f"image is being used by stopped container {cid} (")
    assert _ids(sb) == [short]
    out = sb("rmi", "-f", "base:1").stdout  # stopped container: deleted, as Docker
    assert out == f"Untagged: base:1\nDeleted: {image_id}\n"
    assert _ids(sb, "-a") == []
    assert sb("start", "-a", "user").returncode == 0  # its layers stayed


def test_rmi_f_of_an_image_a_running_container_uses_only_untags_it(sb: Sandbox) -> None:
    image_id = _id(sb, "base:1")
    short = image_id[7:19]
    sb("run", "-d", "--name", "busy", "base:1", "sleep", "60")
    try:
        cid = sb("inspect", "-f", "{{.Id}}", "busy").stdout.strip()[:12]
        line = sb.fails("rmi", "-f", short, code=1)
        assert line.startswith(f"sandbox: conflict: unable to delete {short} (cannot be "
                               f"forced) - image is being used by running container {cid} (")
        assert sb("rmi", "-f", "base:1").stdout == "Untagged: base:1\n"
        table = sb("images").stdout.splitlines()
        assert [r.split()[:3] for r in table[1:]] == [["<none>", "<none>", short]]
        assert sb("exec", "busy", "true").returncode == 0
    finally:
        sb("rm", "-f", "busy")


def test_rmi_of_an_image_in_several_repositories(sb: Sandbox) -> None:
    image_id = _id(sb, "base:1")
    short = image_id[7:19]
    sb("tag", "base:1", "example.com/team/base:2")
    sb("tag", "base:1", "mirror/base:latest")
    assert sb("rmi", "mirror/base").stdout == "Untagged: mirror/base:latest\n"
    sb("tag", "base:1", "mirror/base:latest")
    line = sb.fails("rmi", short, code=1)
    assert line.startswith(f"sandbox: unable to delete {short} (must be forced): image is "
                           "referenced in multiple repositories")
    out = sb("rmi", "-f", short).stdout.splitlines()
    assert sorted(out[:-1]) == ["Untagged: base:1", "Untagged: example.com/team/base:2",
                                "Untagged: mirror/base:latest"]
    assert out[-1] == f"Deleted: {image_id}"
    assert _ids(sb, "-a") == []


def test_history_rows(sb: Sandbox) -> None:
    sb("run", "--name", "c", "base:1", "sh", "-c", "echo x > /added")
    sb("commit", "-m", "added a file", "c", "child:1")
    rows = [json.loads(r) for r in sb("history", "--format", "json", "child:1").stdout.split("\n")
            if r]
    assert len(rows) == 2
    assert rows[0]["ID"] == _id(sb, "child:1")[7:19] and rows[1]["ID"] == "<missing>"
    assert rows[0]["Comment"] == "added a file"
    assert rows[1]["CreatedBy"].startswith("sandbox import ")
    assert all(r["Size"].endswith("B") for r in rows)
    table = sb("history", "--no-trunc", "child:1").stdout.splitlines()
    assert table[1].startswith(_id(sb, "child:1"))
    assert sb("history", "-q", "child:1").stdout.split() == [_id(sb, "child:1")[7:19],
                                                            "<missing>"]


def test_pull_platform_of_a_multi_arch_index(tmp_path: Path, fake: FakeRegistry) -> None:
    sb = Sandbox(tmp_path)
    amd = make_image([{"arch": b"amd64"}], arch="amd64")
    arm = make_image([{"arch": b"arm64-v8"}], arch="arm64", variant="v8")
    raw, _ = make_index([(amd, {"os": "linux", "architecture": "amd64"}),
                         (arm, {"os": "linux", "architecture": "arm64", "variant": "v8"})])
    serve_image(fake, "multi/app", amd, index=raw)
    serve_image(fake, "multi/app", arm, index=raw)
    ref = f"{fake.host}/multi/app:latest"
    out = sb("pull", "--platform", "linux/arm64/v8", ref).stdout
    assert "Status: Downloaded newer image" in out
    assert sb("image", "inspect", "-f", "{{.Architecture}}/{{.Variant}}", ref).stdout == \
        "arm64/v8\n"
    blob_gets = [p for m, p, _ in fake.seen if m == "GET" and "/blobs/" in p]
    assert not any(json.loads(amd.manifest)["layers"][0]["digest"] in p for p in blob_gets)
    line = sb.fails("pull", "--platform", "linux/s390x", ref)
    assert "no image for platform linux/s390x in the index (offered: linux/amd64, " \
           "linux/arm64/v8)" in line
