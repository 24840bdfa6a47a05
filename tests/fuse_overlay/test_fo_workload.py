"""A real workload in a container on the fuse driver: unpack the Python standard library,
byte-compile it, remove it; the tree must be the one the kernel-overlay (and copy) run makes.

The container is a busybox image with the host's ``/usr`` bound read-only (Debian's python3 at
``/usr/bin/python3``), not the built-in ``host`` image: that one always stacks the host's
directories with kernel overlayfs, whatever driver is asked for. Everything the workload writes
goes through the container's root filesystem, the union under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.requires_userns]

PYTHON = "/usr/bin/python3"

# names, types and permissions, sizes, link counts and contents of every entry under stdlib/
# (directory sizes are left out: they depend on the file system's block allocation)
LISTING = r"""
import hashlib, json, os, stat, sys
out = []
for top, dirs, files in os.walk("stdlib"):
    dirs.sort()
    for name in [top] + sorted(os.path.join(top, f) for f in files):
        st = os.lstat(name)
        if stat.S_ISLNK(st.st_mode):
            what = os.readlink(name)
        elif stat.S_ISREG(st.st_mode):
            with open(name, "rb") as f:
                what = hashlib.sha256(f.read()).hexdigest()
        else:
            what = None
        size = None if stat.S_ISDIR(st.st_mode) else st.st_size
        out.append([name, oct(st.st_mode), size, st.st_nlink, what])
json.dump(out, sys.stdout)
"""

WORKLOAD = f"""
grep ' / ' /proc/mounts | cut -d' ' -f3
mkdir /work && cd /work
tar -xf /in/stdlib.tar
{PYTHON} -m compileall -q stdlib >/dev/null
echo "compileall $?"
{PYTHON} -c "$LISTING"
echo
rm -rf stdlib
ls -A /work | wc -l
"""


def _stdlib() -> str:
    out = subprocess.run([PYTHON, "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.fixture(scope="module")
def stdlib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding ``stdlib.tar``: the host python's standard library, without byte
    code and third-party packages (to be bound into the container at /in)."""
    if not os.access(PYTHON, os.X_OK):
        pytest.skip(f"{PYTHON} is needed (the container runs the host's python)")
    src = _stdlib()
    skip = {"__pycache__", "site-packages", "dist-packages"}
    d = tmp_path_factory.mktemp("stdlib")
    with tarfile.open(d / "stdlib.tar", "w") as tar:
        tar.add(src, arcname="stdlib",
                filter=lambda ti: None if os.path.basename(ti.name) in skip else ti)
    os.chmod(d, 0o755)
    return d


@pytest.fixture(scope="module")
def python_image(session_store: Path, busybox_image: str, tmp_path_factory) -> str:
    """busybox with ``/lib`` and ``/lib64`` pointing into ``/usr``, where the host's ``/usr``
    is bound: enough for the host's dynamically linked python3."""
    import imagekit

    from sandbox.images import ImageStore
    from sandbox.store import Store

    work = tmp_path_factory.mktemp("pyimage")
    root = imagekit.make_busybox_rootfs(work / "rootfs")
    (root / "lib").symlink_to("usr/lib")
    (root / "lib64").symlink_to("usr/lib64")
    def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    with tarfile.open(work / "image.tar", "w") as tar:
        for entry in sorted(os.listdir(root)):
            tar.add(root / entry, arcname=entry, filter=as_root)
    ImageStore(Store(str(session_store))).import_rootfs(str(work / "image.tar"),
                                                        ["busybox-usr"])
    return "busybox-usr"


def _workload(cli, image: str, stdlib_dir: Path, driver: str) -> tuple[str, str, list, int]:
    """The root file system's type, compileall's status, the tree, what is left after rm."""
    r = cli("run", "--rm", "--storage-driver", driver, "-v", "/usr:/usr:ro",
            "-v", f"{stdlib_dir}:/in:ro", "-e", f"LISTING={LISTING}", image, "sh", "-c",
            WORKLOAD, timeout=900)
    assert r.returncode == 0, r.stderr
    fstype, status, listing, left = r.stdout.split("\n")[:4]
    return fstype, status, json.loads(listing), int(left)


@pytest.mark.requires_fuse
def test_stdlib_untar_compile_remove_like_kernel_overlay(cli, python_image, stdlib_dir):
    fstype, status, ours, left = _workload(cli, python_image, stdlib_dir, "fuse")
    assert fstype.startswith("fuse"), f"the container's root is {fstype}, not fuse_overlay"
    assert left == 0, "rm -rf left something behind"
    assert sum(1 for e in ours if e[0].endswith(".pyc")) > 500
    assert sum(1 for e in ours if e[0].endswith(".py")) > 500
    oracles = ["copy"]
    if json.loads(cli("info", "--format", "json").stdout)[
            "storage_driver"]["probes"]["overlay"] == "ok":
        oracles.insert(0, "overlay")
    for driver in oracles:
        their_fstype, their_status, theirs, their_left = _workload(cli, python_image,
                                                                   stdlib_dir, driver)
        assert not their_fstype.startswith("fuse")
        assert (status, left) == (their_status, their_left), driver
        assert len(ours) == len(theirs), driver
        diff = [(a, b) for a, b in zip(ours, theirs, strict=True) if a != b]
        assert not diff, f"{driver}: {len(diff)} entries differ, first {diff[:5]}"
