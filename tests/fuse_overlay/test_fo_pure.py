"""The union logic without FUSE: LayerStack, whiteouts, copy-up, ownership, option parsing."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from fuse_overlay.copyup import CopyUp, copy_sparse
from fuse_overlay.layers import LayerStack
from fuse_overlay.options import UsageError, parse_args, split_escaped
from fuse_overlay.ownership import (
    OVERFLOW_GID,
    OVERFLOW_UID,
    IdMapping,
    Ownership,
    format_override,
    parse_override,
)
from fuse_overlay.whiteout import create_whiteout, is_opaque_dir, remove_whiteout, set_opaque


def make(root: Path, spec: dict[str, str | None]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in spec.items():
        path = root / rel.rstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.mkdir(exist_ok=True)
        else:
            path.write_text(content)
    return root


@pytest.fixture
def stack(tmp_path: Path) -> LayerStack:
    low = make(tmp_path / "low", {"a": "low", "b": "low", "d/": None, "d/x": "x", "d/z": "z",
                                  "o/": None, "o/hidden": "h", "w": "w"})
    mid = make(tmp_path / "mid", {"a": "mid", "d/": None, "d/y": "y", "o/": None,
                                  "o/.wh..wh..opq": "",
                                  "o/seen": "s", ".wh.w": "", "d/.wh.z": ""})
    up = make(tmp_path / "up", {"c": "up"})
    return LayerStack([str(mid), str(low)], str(up))


def test_lookup_top_down(stack: LayerStack) -> None:
    assert stack.resolve("/a").real.endswith("mid/a")
    assert stack.resolve("/b").real.endswith("low/b")
    assert stack.resolve("/c").layer == 0
    assert stack.lookup("/nope") is None


def test_readdir_merges_without_duplicates_or_whiteouts(stack: LayerStack) -> None:
    assert sorted(stack.list_dir("/")) == ["a", "b", "c", "d", "o"]
    assert sorted(stack.list_dir("/d")) == ["x", "y"]


def test_wh_file_hides_lower_name(stack: LayerStack) -> None:
    assert stack.lookup("/w") is None
    assert stack.lookup("/d/z") is None
    assert stack.lookup("/.wh.w") is None


def test_opaque_marker_stops_descent(stack: LayerStack) -> None:
    assert stack.list_dir("/o") == ["seen"]
    assert stack.lookup("/o/hidden") is None
    assert stack.dir_layers("/o") == (1,)


def test_chardev_whiteout_and_opaque_xattr(tmp_path: Path) -> None:
    low = make(tmp_path / "low", {"gone": "g", "dir/": None, "dir/old": "o"})
    up = make(tmp_path / "up", {"dir/": None, "dir/new": "n"})
    try:
        create_whiteout(str(up), "gone")
    except PermissionError:
        pytest.skip("mknod 0:0 refused and .wh. fallback tested elsewhere")
    set_opaque(str(up / "dir"))
    s = LayerStack([str(low)], str(up))
    assert s.lookup("/gone") is None
    assert s.list_dir("/") == ["dir"]
    assert s.list_dir("/dir") == ["new"]
    assert is_opaque_dir(str(up / "dir"))


def test_whiteout_fallback_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EPERM, "mknod refused")

    monkeypatch.setattr(os, "mknod", refuse)
    create_whiteout(str(tmp_path), "name")
    assert (tmp_path / ".wh.name").exists()
    assert remove_whiteout(str(tmp_path), "name")
    assert not (tmp_path / ".wh.name").exists()


def test_lower_has_ignores_upper_whiteout(stack: LayerStack) -> None:
    assert stack.lower_has("/a")
    assert not stack.lower_has("/c")
    assert not stack.lower_has("/w")  # hidden by the middle layer already


def test_not_a_directory(stack: LayerStack) -> None:
    assert stack.lookup("/a/x") is None
    with pytest.raises(NotADirectoryError):
        stack.dir_layers("/a")


def test_copy_up_keeps_metadata_and_parents(stack: LayerStack, tmp_path: Path) -> None:
    work = make(tmp_path / "work", {})
    low_x = tmp_path / "low/d/x"
    os.chmod(low_x, 0o640)
    os.setxattr(low_x, "user.k", b"v")
    os.utime(low_x, ns=(1_234_567_891, 9_876_543_219))
    cu = CopyUp(stack, str(work))
    real = cu.copy_up(stack.resolve("/d/x"))
    assert real == str(tmp_path / "up/d/x")
    st = os.lstat(real)
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_234_567_891, 9_876_543_219)
    assert os.getxattr(real, "user.k") == b"v"
    assert Path(real).read_text() == "x"
    assert not is_opaque_dir(str(tmp_path / "up/d"))
    assert sorted(stack.list_dir("/d")) == ["x", "y"]
    assert os.listdir(work / "work") == []


def test_copy_tree(stack: LayerStack, tmp_path: Path) -> None:
    cu = CopyUp(stack, str(make(tmp_path / "work", {})))
    cu.copy_tree("/d")
    assert sorted(os.listdir(tmp_path / "up/d")) == ["x", "y"]


def test_copy_sparse_keeps_holes(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    with open(src, "wb") as fh:
        fh.seek(64 << 20)
        fh.write(b"tail")
    inp, out = os.open(src, os.O_RDONLY), os.open(dst, os.O_WRONLY | os.O_CREAT, 0o600)
    copy_sparse(inp, out, os.fstat(inp).st_size)
    os.close(inp)
    os.close(out)
    assert dst.stat().st_size == (64 << 20) + 4
    assert dst.stat().st_blocks * 512 < (1 << 20)
    with open(dst, "rb") as fh:
        fh.seek(64 << 20)
        assert fh.read() == b"tail"


def test_override_stat_format() -> None:
    ov = parse_override(b"1000:1001:0755")
    assert ov is not None and (ov.uid, ov.gid, ov.mode) == (1000, 1001, 0o755)
    assert parse_override(b"1:2:0644:file") is not None
    assert parse_override(b"junk") is None
    assert format_override(5, 6, stat.S_IFREG | 0o4755) == b"5:6:04755"


def test_id_mappings_follow_fuse_overlayfs() -> None:
    """``uidmapping=UID:MAPPED-UID:LEN``: an owner UID+k on disk is shown as MAPPED-UID+k (the
    man page's example: files owned 0:0 and 1:1 on disk show as 1000 and 110000, which the user
    namespace it describes shows as 0 and 1 again); setting an owner maps back."""
    own = Ownership(uid_map=IdMapping.parse_list("0:1000:1:1:110000:65536"),
                    gid_map=IdMapping.parse_list("0:1000:1,1:110000:65536"))
    assert own.shown(0, 0) == (1000, 1000)
    assert own.shown(1, 1) == (110000, 110000)
    assert own.shown(1000, 5) == (110999, 110004)
    assert own.on_disk(1000, 110004) == (0, 5)
    assert own.on_disk(-1, -1) == (-1, -1)
    narrow = Ownership(uid_map=IdMapping.parse_list("0:1000:1"),
                       gid_map=IdMapping.parse_list("0:1000:1"))
    assert narrow.shown(7, 7) == (OVERFLOW_UID, OVERFLOW_GID)  # outside every range
    assert narrow.on_disk(7, 1000) == (-1, 0)  # -1: refused by chown
    assert Ownership(squash_uid=0, squash_gid=0).shown(12, 34) == (0, 0)
    with pytest.raises(ValueError):
        IdMapping.parse_list("1:2")


def test_options_like_fuse_overlayfs(tmp_path: Path) -> None:
    for name in ("l1", "l2", "u", "w", "m"):
        (tmp_path / name).mkdir()
    t = tmp_path
    cfg = parse_args(["-o", f"lowerdir={t}/l1:{t}/l2,upperdir={t}/u,workdir={t}/w",
                      "-o", "squash_to_uid=3,noacl,volatile,allow_other,fsync=0",
                      "-o", "max_read=131072", str(t / "m")])  # ignored, as fuse-overlayfs
    assert cfg.lowerdirs == (f"{t}/l1", f"{t}/l2")
    assert cfg.ownership.squash_uid == 3 and cfg.noacl and cfg.volatile
    assert cfg.fuse_options == {"allow_other": True}
    assert not cfg.read_only and not cfg.foreground
    ro = parse_args(["-f", f"-olowerdir={t}/l1", str(t / "m")])
    assert ro.read_only and ro.foreground and ro.upperdir is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-o", "lowerdir=/,frobnicate", "/"], "unknown option frobnicate"),
        (["-o", "upperdir=/", "/"], "missing lowerdir"),
        (["-o", "lowerdir=/,upperdir=/", "/"], "needs workdir"),
        (["-o", "lowerdir=/nonexistent-dir", "/"], "not a directory"),
        (["-o", "lowerdir=/"], "mount point"),
        (["-x", "-o", "lowerdir=/", "/"], "unknown argument"),
    ],
)
def test_bad_options_are_one_line_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        parse_args(argv)
    assert "\n" not in str(info.value)


def test_split_escaped() -> None:
    assert split_escaped(r"a\,b,c", ",") == ["a,b", "c"]
    assert split_escaped(r"x\:y:z", ":") == ["x:y", "z"]


def test_operations_getattr_applies_mapping_and_override(tmp_path: Path) -> None:
    from fuse_overlay.operations import OverlayOperations

    low = make(tmp_path / "low", {"f": "data", "g": "g"})
    me = os.getuid()
    # override ids are on-disk ids: the mapping applies to them as to real owners
    os.setxattr(low / "f", "user.containers.override_stat", f"{me}:1234:0600".encode())
    ops = OverlayOperations(
        LayerStack([str(low)]), None,
        ownership=Ownership(uid_map=(IdMapping(me, 10, 1),),
                            gid_map=(IdMapping(os.getgid(), 20, 1),)),
        read_only=True,
    )
    f, g, root = ops.getattr("/f"), ops.getattr("/g"), ops.getattr("/")
    assert (f["st_uid"], f["st_gid"], stat.S_IMODE(f["st_mode"])) == (10, OVERFLOW_GID, 0o600)
    assert (g["st_uid"], g["st_gid"]) == (10, 20)
    assert root["st_ino"] == 1 and f["st_ino"] != g["st_ino"]
    assert ops.getattr("/f")["st_ino"] == f["st_ino"]
    with pytest.raises(OSError) as info:
        ops.getattr("/missing")
    assert info.value.errno == errno.ENOENT
    with pytest.raises(OSError) as info:
        ops.open("/g", os.O_WRONLY)
    assert info.value.errno == errno.EROFS


def test_command_round_trips_through_the_parser(tmp_path: Path) -> None:
    import fuse_overlay

    dirs = {}
    for name in ("lo,w:1", "l2", "u", "w", "m"):
        dirs[name] = tmp_path / name
        dirs[name].mkdir()
    argv = fuse_overlay.command(
        [str(dirs["lo,w:1"]), str(dirs["l2"])], str(dirs["m"]), upperdir=str(dirs["u"]),
        workdir=str(dirs["w"]), options=["squash_to_root"], ready_fd=7,
    )
    assert argv[1:4] == ["-m", "fuse_overlay", "-f"]
    cfg = parse_args(argv[3:])
    assert cfg.lowerdirs == (str(dirs["lo,w:1"]), str(dirs["l2"]))
    assert cfg.upperdir == str(dirs["u"]) and cfg.ready_fd == 7 and cfg.foreground
    assert cfg.ownership.squash_uid == 0


def test_readdir_entries_carry_what_getattr_reports(stack: LayerStack, tmp_path: Path) -> None:
    """READDIRPLUS entries hold the attributes a LOOKUP would get, and offsets resume."""
    from fuse_overlay.operations import OverlayOperations

    os.link(tmp_path / "low/d/x", tmp_path / "low/d/x2")  # a hard link: its names are noted
    ops = OverlayOperations(stack, str(make(tmp_path / "work", {})))
    fh = ops.opendir("/d")
    entries = list(ops.readdir_entries("/d", fh, 0, True))
    assert [e[0] for e in entries[:2]] == [".", ".."]
    assert sorted(e[0] for e in entries[2:]) == ["x", "x2", "y"]
    assert [e[4] for e in entries] == list(range(1, len(entries) + 1))
    for name, ino, dtype, attrs, _next in entries[2:]:
        assert attrs == ops.getattr(f"/d/{name}")
        assert ino == attrs["st_ino"] and dtype == stat.S_IFMT(attrs["st_mode"])
    assert {"/d/x", "/d/x2"} <= ops.attrs.links[ops.getattr("/d/x")["st_ino"]]
    # a later request goes on from its offset; READDIR (not plus) carries no attributes
    rest = list(ops.readdir_entries("/d", fh, 3, False))
    assert [e[0] for e in rest] == [e[0] for e in entries[3:]]
    assert all(e[3] is None for e in rest)
    # the listing is the one taken at offset 0 until the directory is read from the start again
    (tmp_path / "up/d").mkdir()
    (tmp_path / "up/d/new").write_text("n")
    stack.forget("/d")
    assert "new" not in [e[0] for e in ops.readdir_entries("/d", fh, 2, False)]
    assert "new" in [e[0] for e in ops.readdir_entries("/d", fh, 0, False)]
    ops.releasedir("/d", fh)
    # attributes go once per directory: the kernel keeps what it got (it looks up the rest)
    fh = ops.opendir("/d")
    assert all(e[3] is None for e in ops.readdir_entries("/d", fh, 0, True))
    ops.releasedir("/d", fh)


def test_rename_exchange_copies_up_and_swaps(stack: LayerStack, tmp_path: Path) -> None:
    from fuse_overlay.operations import OverlayOperations

    ops = OverlayOperations(stack, str(make(tmp_path / "work", {})))
    ops.rename("/b", "/c", 2)  # a lower file and an upper one
    assert (tmp_path / "up/b").read_text() == "up" and (tmp_path / "up/c").read_text() == "low"
    ops.rename("/d", "/c", 2)  # a directory merged from two layers and a file: copied up whole
    assert sorted(stack.list_dir("/c")) == ["x", "y"]
    assert stack.resolve("/d").layer == 0 and not stack.resolve("/d").is_dir
    assert (tmp_path / "up/d").read_text() == "low" and (tmp_path / "low/d/x").exists()
    (tmp_path / "up/n").mkdir()
    (tmp_path / "up/n/new").write_text("n")
    stack.forget("/")
    ops.rename("/n", "/o", 2)  # an upper-only directory lands where the lower layers have "o"
    assert stack.list_dir("/o") == ["new"] and stack.list_dir("/n") == ["seen"]
    assert is_opaque_dir(str(tmp_path / "up/o"))
    for args, code in ((("/missing", "/a", 2), errno.ENOENT),
                       (("/a", "/c", 3), errno.EINVAL), (("/a", "/c", 4), errno.EINVAL)):
        with pytest.raises(OSError) as info:
            ops.rename(*args)
        assert info.value.errno == code
