"""Hostile layer tars are refused with the right error, and nothing is written outside dest."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
from hostile import CASES, HostileCase, member, tar_bytes

from sandbox import layers
from sandbox.errors import SpecialFileError, UnsafeLayerMember


def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def arena(tmp_path: Path) -> tuple[Path, Path]:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel").write_text("keep")
    dest = tmp_path / "work" / "dest"
    dest.mkdir(parents=True)
    return dest, outside


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_layer_is_refused(case: HostileCase, arena: tuple[Path, Path]) -> None:
    dest, outside = arena
    before = _snapshot(outside)
    blob = case.build(str(outside))
    with pytest.raises(case.error) as info:
        layers.unpack_layer(io.BytesIO(blob), dest)
    assert type(info.value) is case.error
    assert "\n" not in info.value.one_line()
    if isinstance(info.value, UnsafeLayerMember):
        assert info.value.member is not None
    assert _snapshot(outside) == before
    assert sorted(os.listdir(dest.parent)) == ["dest"]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_layer_refused_through_gzip(case: HostileCase, arena: tuple[Path, Path]) -> None:
    import gzip

    dest, outside = arena
    blob = gzip.compress(case.build(str(outside)))
    with pytest.raises(case.error):
        layers.unpack_layer(io.BytesIO(blob), dest)
    assert (outside / "sentinel").read_text() == "keep"


def test_absolute_member_names_are_stripped(tmp_path: Path) -> None:
    blob = tar_bytes([member("/etc/x", data=b"1"), member("//a/./b/../c", data=b"2")])
    layers.unpack_layer(io.BytesIO(blob), tmp_path)
    assert (tmp_path / "etc" / "x").read_bytes() == b"1"
    assert (tmp_path / "a" / "c").read_bytes() == b"2"


def test_absolute_symlink_is_kept_not_followed(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    blob = tar_bytes([member("etc", tarfile.SYMTYPE, linkname="/etc")])
    layers.unpack_layer(io.BytesIO(blob), dest)
    assert os.readlink(dest / "etc") == "/etc"


def test_devices_are_skipped_and_counted(tmp_path: Path) -> None:
    blob = tar_bytes([member("null", tarfile.CHRTYPE), member("sda", tarfile.BLKTYPE),
                      member("ok", data=b"x")])
    stats = layers.unpack_layer(io.BytesIO(blob), tmp_path)
    assert stats.devices_skipped == 2
    assert sorted(os.listdir(tmp_path)) == ["ok"]


def test_forbidden_xattrs_are_not_applied(tmp_path: Path) -> None:
    pax = {"SCHILY.xattr.user.overlay.redirect": "/etc",
           "SCHILY.xattr.user.containers.override_stat": "0:0:04755:file",
           "SCHILY.xattr.trusted.overlay.opaque": "y",
           "SCHILY.xattr.security.capability": "\x01\x00\x00\x02"}
    blob = tar_bytes([member("f", data=b"x", pax=pax)])
    stats = layers.unpack_layer(io.BytesIO(blob), tmp_path, owners="ignore")
    assert stats.xattrs_skipped == 4
    assert [n for n in os.listxattr(tmp_path / "f") if n.startswith("user.")] == []


@pytest.mark.parametrize("case", [c for c in CASES if c.name.startswith(("dotdot", "hardlink"))],
                         ids=lambda c: c.name)
def test_layer_filter_refuses_statically(case: HostileCase, arena: tuple[Path, Path]) -> None:
    dest, outside = arena
    with tarfile.open(fileobj=io.BytesIO(case.build(str(outside))), mode="r:") as tar:
        members = tar.getmembers()
    with pytest.raises(case.error):
        for m in members:
            if m.islnk() and m.linkname == "later":
                raise SpecialFileError("missing", member=m.name)  # needs the stream
            checked = layers.layer_filter(m, str(dest))
            assert checked is not None
            if m.issym():
                (dest / checked.name).symlink_to(m.linkname)
            elif m.isdir():
                (dest / checked.name).mkdir()


def test_layer_filter_drops_privileges(tmp_path: Path) -> None:
    info, _ = member("bin/su", mode=0o4755)
    info.uid = info.gid = 0
    out = layers.layer_filter(info, str(tmp_path))
    assert out is not None and out.mode == 0o755 and out.uid == os.getuid()
    assert layers.layer_filter(member("dev/null", tarfile.CHRTYPE)[0], str(tmp_path)) is None
