"""Images made by umoci, a real OCI tool: ``sandbox load`` of its layout directory, and
``sandbox pull`` of it after skopeo pushed it to the Distribution registry; both then run,
with umoci's files, whiteout and config."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sandbox"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import imagekit  # noqa: E402
from imagetest_helpers import Sandbox  # noqa: E402
from registry_fixtures import Registries  # noqa: E402

pytestmark = pytest.mark.requires_userns


def _umoci(*args: str) -> None:
    proc = subprocess.run(["umoci", *args], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, (args, proc.stderr)


@pytest.fixture(scope="module")
def umoci_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OCI layout made with umoci alone: a busybox layer with extra files, a second layer
    that deletes one of them (a umoci whiteout) and adds another, and a config set by umoci."""
    if shutil.which("umoci") is None:
        pytest.skip("umoci not installed")
    if imagekit.busybox_path() is None:
        pytest.skip("a static busybox is needed (apt-get install busybox-static)")
    work = tmp_path_factory.mktemp("umoci")
    layout, image = work / "layout", f"{work / 'layout'}:v1"
    _umoci("init", "--layout", str(layout))
    _umoci("new", "--image", image)
    bundle = work / "bundle"
    _umoci("unpack", "--rootless", "--image", image, str(bundle))
    rootfs = bundle / "rootfs"
    imagekit.make_busybox_rootfs(rootfs)
    (rootfs / "etc" / "umoci-made").write_text("first layer\n")
    (rootfs / "etc" / "doomed").write_text("deleted by the second layer\n")
    (rootfs / "opt" / "app").mkdir(parents=True)
    (rootfs / "opt" / "app" / "run.sh").write_text("#!/bin/sh\necho app says $GREETING\n")
    (rootfs / "opt" / "app" / "run.sh").chmod(0o755)
    _umoci("repack", "--image", image, str(bundle))
    shutil.rmtree(bundle)
    _umoci("unpack", "--rootless", "--image", image, str(bundle))
    (bundle / "rootfs" / "etc" / "doomed").unlink()
    (bundle / "rootfs" / "etc" / "second").write_text("second layer\n")
    _umoci("repack", "--image", image, str(bundle))
    _umoci("config", "--image", image, "--config.env=GREETING=hello-from-umoci",
           "--config.cmd=/opt/app/run.sh", "--config.workingdir=/opt/app",
           "--config.label=made.by=umoci")
    return layout


def _check_runs(sb: Sandbox, ref: str) -> None:
    assert sb("run", "--rm", ref).stdout == "app says hello-from-umoci\n"
    out = sb("run", "--rm", ref, "sh", "-c",
             "cat /etc/umoci-made /etc/second; pwd; test -e /etc/doomed || echo doomed-gone")
    assert out.stdout == "first layer\nsecond layer\n/opt/app\ndoomed-gone\n"
    (obj,) = json.loads(sb("image", "inspect", ref).stdout)
    assert obj["Config"]["Labels"] == {"made.by": "umoci"}
    assert "GREETING=hello-from-umoci" in obj["Config"]["Env"]
    assert len(obj["RootFS"]["Layers"]) == 2


def test_load_of_a_umoci_layout_dir_runs(umoci_layout: Path, tmp_path: Path) -> None:
    sb = Sandbox(tmp_path)
    out = sb("load", "-i", str(umoci_layout)).stdout
    assert out.startswith("Loaded image")
    image_id = json.loads(sb("images", "--format", "json").stdout.splitlines()[0])["ID"]
    sb("tag", image_id, "umoci/made:v1")
    _check_runs(sb, "umoci/made:v1")


def test_pull_of_a_umoci_image_pushed_by_skopeo_runs(umoci_layout: Path, tmp_path: Path,
                                                     registries: Registries) -> None:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo not installed")
    reg = registries.anon()
    ref = f"{reg.host}/umoci/made:v1"
    proc = subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false",
                           f"oci:{umoci_layout}:v1", f"docker://{ref}"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    sb = Sandbox(tmp_path)
    assert sb("pull", "-q", ref).stdout == ref + "\n"
    _check_runs(sb, ref)
