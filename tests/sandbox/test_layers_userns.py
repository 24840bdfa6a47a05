"""Compatibility with the kernel: overlayfs honours our whiteouts, we read the kernel's uppers.

Each test runs its privileged part in ``unshare`` subprocesses (util-linux), so the pytest process
itself never enters a namespace. ``tests/conftest.py`` probes ``requires_userns`` and
``requires_subuid`` once and skips with the reason.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from hostile import member, tar_bytes

from sandbox import layers

OVERRIDE = "user.containers.override_stat"
pytestmark = pytest.mark.requires_userns


@functools.cache
def _probe(*argv: str) -> str | None:
    """None if ``argv`` runs, else why not (the reason tests are skipped with)."""
    if shutil.which("unshare") is None:
        return "util-linux unshare is not installed"
    try:
        proc = subprocess.run(["unshare", *argv, "true"], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare {' '.join(argv)} failed: {exc}"
    if proc.returncode != 0:
        return f"unshare {' '.join(argv)} refused: {proc.stderr.strip()}"
    return None


def in_userns(script: str, *args: str) -> str:
    proc = subprocess.run(["unshare", "-Urm", "sh", "-euc", script, "sh", *args],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 and "overlay" in proc.stderr and "mount" in proc.stderr:
        pytest.skip(f"kernel overlayfs not mountable in a user namespace: {proc.stderr}")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def unpack(blob: bytes, dest: Path) -> None:
    dest.mkdir()
    layers.unpack_layer(io.BytesIO(blob), dest)


def merged_listing(lowers: list[Path], tmp_path: Path, name: str = "mnt") -> list[str]:
    mnt = tmp_path / name
    mnt.mkdir()
    out = in_userns('mount -t overlay overlay -o "lowerdir=$1,userxattr" "$2"; cd "$2"; '
                    'find . -mindepth 1 | sort; for f in $(find . -type f | sort); do '
                    'echo "$f=$(cat "$f")"; done',
                    ":".join(map(str, lowers)), str(mnt))
    return out.split()


LOWER = tar_bytes([member("a", data=b"A"), member("x/old", data=b"O"), member("y/f", data=b"F"),
                   member("y/g", data=b"G"), member("z/keep", data=b"K")])


def test_kernel_overlay_honours_unpacked_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    l1, l2 = tmp_path / "l1", tmp_path / "l2"
    unpack(LOWER, l1)
    unpack(tar_bytes([member(".wh.a"), member("x/.wh..wh..opq"), member("x/new", data=b"N"),
                      member("y/.wh.f"), member(".wh.z"), member("z/again", data=b"Z")]), l2)
    assert merged_listing([l2, l1], tmp_path) == [
        "./x", "./x/new", "./y", "./y/g", "./z", "./z/again",
        "./x/new=N", "./y/g=G", "./z/again=Z"]


def test_kernel_made_upper_becomes_a_layer_and_a_diff(tmp_path: Path) -> None:
    l1, upper, work, mnt = (tmp_path / n for n in ("l1", "upper", "work", "rw"))
    unpack(LOWER, l1)
    for d in (upper, work, mnt):
        d.mkdir()
    in_userns('mount -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$3,userxattr" "$4";'
              'cd "$4"; rm a; rm -r x; mkdir x; echo n > x/new; echo f2 > y/f; rm y/g;'
              'mkdir -p n/m; echo q > n/m/q', str(l1), str(upper), str(work), str(mnt))
    in_userns('rm -rf "$1"', str(work))  # the kernel's work dir is root-owned in the namespace
    assert layers.diff_upper(upper, [l1]) == [
        ("D", "/a"), ("A", "/n"), ("A", "/n/m"), ("A", "/n/m/q"), ("C", "/x"), ("A", "/x/new"),
        ("D", "/x/old"), ("C", "/y"), ("C", "/y/f"), ("D", "/y/g")]
    out = io.BytesIO()
    layers.write_layer(upper, out, compression="zstd")
    with tarfile.open(fileobj=layers.open_decompressed(io.BytesIO(out.getvalue())),
                      mode="r|") as tar:
        names = [m.name for m in tar]
    # sorted by the upper's names: whiteout "g" comes after "f" and is written as ".wh.g"
    assert names == [".wh.a", "n", "n/m", "n/m/q", "x", "x/.wh..wh..opq", "x/new", "y", "y/f",
                     "y/.wh.g"]
    l2 = tmp_path / "l2"
    l2.mkdir()
    layers.unpack_layer(io.BytesIO(out.getvalue()), l2)
    assert merged_listing([l2, l1], tmp_path) == [
        "./n", "./n/m", "./n/m/q", "./x", "./x/new", "./y", "./y/f", "./z", "./z/keep",
        "./n/m/q=q", "./x/new=n", "./y/f=f2", "./z/keep=K"]


def test_chown_in_a_single_id_namespace_falls_back_to_the_override_xattr(
        tmp_path: Path) -> None:
    f, data = member("home/app/f", data=b"x", mode=0o640)
    f.uid, f.gid = 1000, 1000
    r, rdata = member("etc/shadow", data=b"s", mode=0o640)
    blob = tmp_path / "layer.tar"
    blob.write_bytes(tar_bytes([(f, data), (r, rdata)]))
    dest = tmp_path / "dest"
    dest.mkdir()
    code = ("import sys; from pathlib import Path; from sandbox import layers; "
            "s = layers.unpack_layer(open(sys.argv[1], 'rb'), Path(sys.argv[2])); "
            "print(s.owner_overrides)")
    out = subprocess.run(["unshare", "-Ur", sys.executable, "-c", code, str(blob), str(dest)],
                         check=True, timeout=60, capture_output=True, text=True).stdout
    assert out.strip() == "1"
    assert os.getxattr(dest / "home/app/f", OVERRIDE) == b"1000:1000:0640:file"
    assert OVERRIDE not in os.listxattr(dest / "etc/shadow")  # root is mapped: chown worked
    assert os.getxattr(dest, OVERRIDE) == b"0:0:0755:dir"
    assert os.stat(dest / "home/app/f").st_uid == os.getuid()


@pytest.mark.requires_subuid
def test_chown_gives_real_owners_inside_a_full_user_namespace(tmp_path: Path) -> None:
    reason = _probe("--map-auto", "--map-root-user")
    if reason:
        pytest.skip(reason)
    f, data = member("home/app/f", data=b"x", mode=0o444)
    f.uid, f.gid = 1000, 1000
    s, sdata = member("bin/su", data=b"su", mode=0o4755)
    blob = tmp_path / "layer.tar"
    blob.write_bytes(tar_bytes([(f, data), (s, sdata)]))
    dest = tmp_path / "dest"
    dest.mkdir()
    code = ("import sys; from pathlib import Path; from sandbox import layers; "
            "layers.unpack_layer(open(sys.argv[1], 'rb'), Path(sys.argv[2]), owners='chown')")
    try:
        subprocess.run(["unshare", "--map-auto", "--map-root-user", sys.executable, "-c", code,
                        str(blob), str(dest)], check=True, timeout=60)
        base = _subuid_base()
        st = os.stat(dest / "home/app/f")
        assert (st.st_uid, st.st_gid) == (base + 999, base + 999)
        assert st.st_mode & 0o7777 == 0o444  # another owner: the mode is kept exactly
        assert OVERRIDE not in os.listxattr(dest / "home/app/f")
        su = os.stat(dest / "bin/su")
        assert su.st_uid == os.getuid() and su.st_mode & 0o7777 == 0o4755
    finally:
        subprocess.run(["unshare", "--map-auto", "--map-root-user", "rm", "-rf", str(dest)],
                       check=False, timeout=60)


def _subuid_base() -> int:
    import pwd

    user = pwd.getpwuid(os.getuid()).pw_name
    with open("/etc/subuid") as f:
        for line in f:
            name, start, _ = line.strip().split(":")
            if name in (user, str(os.getuid())):
                return int(start)
    raise AssertionError("no /etc/subuid range")
