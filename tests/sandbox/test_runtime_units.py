"""Pure unit tests of the runtime's policy: specs, plans, id maps, path resolution, store."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sandbox import errors
from sandbox._paths import clean_container_path, resolve_in_root
from sandbox._record import replace
from sandbox.runtime import idmap
from sandbox.runtime.plan import MASKED_PATHS, READONLY_PATHS, build_plan, format_plan
from sandbox.spec import (
    ContainerSpec,
    IdMap,
    Mount,
    RootfsSpec,
    parse_env_file,
    parse_env_list,
    spec_from_json,
    spec_to_json,
    validate_spec,
)
from sandbox.store import Store, rm_rf


def make_spec(**changes) -> ContainerSpec:
    spec = ContainerSpec(
        id="a" * 64, name="t", image="busybox", image_id="sha256:" + "b" * 64,
        rootfs=RootfsSpec(driver="overlay", lowers=("/l2", "/l1"), upper="/c/upper",
                          work="/c/work", mountpoint="/c/rootfs"),
        argv=("true",), env=("A=1",), container_dir="/c", store_root="/s",
        mounts=(Mount(target="/data", source="/host/data", readonly=True),),
        uid_map=(IdMap(0, 1000, 1),), gid_map=(IdMap(0, 1000, 1),))
    return replace(spec, **changes)


# -- spec ----------------------------------------------------------------------------------

def test_spec_round_trips_through_json():
    spec = make_spec(labels={"k": "v"})
    assert spec_from_json(spec_to_json(spec)) == spec


@pytest.mark.parametrize(("changes", "message"), [
    ({"argv": ()}, "no command specified"),
    ({"env": ("=x",)}, "invalid environment variable"),
    ({"workdir": "rel"}, "working directory .rel. is invalid"),
    ({"network": "bridge"}, "not supported"),
    ({"hostname": "a b"}, "invalid hostname"),
    ({"user": "a:b:c"}, "invalid user"),
    ({"mounts": (Mount(target="rel", source="/x"),)}, "must be an absolute path"),
    ({"mounts": (Mount(target="/x", source="/x", type="nfs"),)}, "invalid mount type"),
])
def test_validate_spec_names_the_problem(changes, message):
    with pytest.raises(errors.SpecError, match=message):
        validate_spec(make_spec(**changes))


def test_env_list_sets_and_copies(monkeypatch):
    assert parse_env_list(["A=1", "B", "C"], {"B": "2"}) == ["A=1", "B=2"]
    with pytest.raises(errors.SpecError):
        parse_env_list(["A B=1"], {})


def test_env_file_skips_comments(tmp_path: Path):
    f = tmp_path / "env"
    f.write_text("# c\n\nA=1\n  B=two words\n")
    assert parse_env_file(str(f)) == ["A=1", "B=two words"]
    with pytest.raises(errors.SpecError, match="cannot read env file"):
        parse_env_file(str(tmp_path / "missing"))
    f.write_bytes(b"A=1\nB=\xf0\x28\n")  # an archive given by mistake, say
    with pytest.raises(errors.SpecError) as info:
        parse_env_file(str(f))
    assert info.value.one_line() == f"env file {f} is not UTF-8 text (line 2)"


# -- plan ----------------------------------------------------------------------------------

def test_plan_order_is_fixed():
    kinds = [op.kind for op in build_plan(make_spec())]
    assert kinds[0] == "lo_up" and kinds[1] == "rslave"
    assert kinds.index("rslave") < kinds.index("mount") < kinds.index("pivot_root")
    assert kinds[-1] in ("pivot_root", "hostname", "remount_ro")
    ops = build_plan(make_spec())
    proc = next(i for i, op in enumerate(ops) if op.fstype == "proc")
    masks = [i for i, op in enumerate(ops) if op.kind == "mask"]
    assert proc < min(masks)


def test_plan_masks_and_readonly_paths_are_runcs():
    ops = build_plan(make_spec())
    assert {op.target for op in ops if op.kind == "mask"} == set(MASKED_PATHS)
    assert {op.target for op in ops if op.kind == "readonly"} == set(READONLY_PATHS)
    assert all(op.optional for op in ops if op.kind in ("mask", "readonly"))


def test_plan_with_the_network_made_by_the_parent_joins_it_before_sysfs():
    """sysfs shows the network devices of its mounter's namespace: the ``netns`` step (the
    parent's namespace, ``lo`` up) comes before ``/sys``, and G makes no ``lo_up`` of its own;
    every mask still comes after the filesystem it masks."""
    ops = build_plan(make_spec(), net_made=True)
    kinds = [op.kind for op in ops]
    assert "lo_up" not in kinds and kinds.count("netns") == 1
    sysfs = next(i for i, op in enumerate(ops) if op.fstype == "sysfs")
    assert kinds.index("netns") < sysfs
    for i, op in enumerate(ops):
        if op.kind == "mask":
            fs = "/proc" if op.target.startswith("/proc/") else "/sys"
            assert i > next(j for j, o in enumerate(ops) if o.kind == "mount" and o.target == fs)
    assert [op.target for op in ops if op.kind == "mask"] == [
        op.target for op in build_plan(make_spec()) if op.kind == "mask"]
    assert "netns" not in [op.kind for op in build_plan(make_spec(network="host"),
                                                        net_made=True)]


def test_plan_network_host_binds_sys_and_skips_lo():
    ops = build_plan(make_spec(network="host"))
    assert "lo_up" not in [op.kind for op in ops]
    assert any(op.kind == "bind" and op.target == "/sys" for op in ops)


def test_plan_overlay_options_escape_and_order():
    spec = make_spec(rootfs=RootfsSpec(driver="overlay", lowers=("/a:b", "/c,d"), upper="/u",
                                       work="/w", mountpoint="/m"))
    op = next(op for op in build_plan(spec) if op.fstype == "overlay")
    assert op.data == "lowerdir=/a\\:b:/c\\,d,upperdir=/u,workdir=/w,userxattr"


def test_plan_volatile_overlay_drops_the_previous_marker_first():
    rootfs = RootfsSpec(driver="overlay", lowers=("/l",), upper="/u", work="/w", mountpoint="/m",
                        volatile=True)
    ops = build_plan(make_spec(rootfs=rootfs))
    i = next(i for i, op in enumerate(ops) if op.fstype == "overlay")
    assert ops[i].data.endswith(",userxattr,volatile")
    assert [(op.kind, op.target, op.optional) for op in ops[i - 3:i]] == [
        ("unlink", "/w/work/incompat/volatile/dirty", True),
        ("rmdir", "/w/work/incompat/volatile", True), ("rmdir", "/w/work/incompat", True)]
    plain = build_plan(make_spec(rootfs=replace(rootfs, volatile=False)))
    assert not any(op.kind in ("unlink", "rmdir") for op in plain)
    assert "volatile" not in next(op for op in plain if op.fstype == "overlay").data


def test_plan_user_mounts_readonly_and_tmpfs():
    spec = make_spec(mounts=(Mount(target="/ro", source="/h", readonly=True),
                             Mount(target="/t", type="tmpfs", options=("size=1m",))))
    ops = build_plan(spec)
    ro = [op for op in ops if op.target == "/ro"]
    assert [op.kind for op in ro] == ["bind", "remount_ro"]
    tmp = next(op for op in ops if op.target == "/t" and op.kind == "mount")
    assert tmp.fstype == "tmpfs" and tmp.data == "size=1m"


def test_plan_readonly_rootfs_and_hostname_come_after_pivot():
    ops = build_plan(make_spec(readonly_rootfs=True, hostname="h"))
    kinds = [op.kind for op in ops]
    assert kinds[-2:] == ["remount_ro", "hostname"]
    assert kinds.index("pivot_root") < kinds.index("hostname")


def test_format_plan_is_one_line_a_step():
    ops = build_plan(make_spec())
    text = format_plan(ops)
    assert len(text.splitlines()) == len(ops)
    assert "<root>/proc" in text


def test_host_rootfs_plan_overlays_each_top_level_dir():
    spec = make_spec(rootfs=RootfsSpec(driver="overlay", lowers=("/etc", "/usr"),
                                       upper="/u", work="/w", mountpoint="/m", host=True,
                                       binds=("/mnt",), tmpfs=("/tmp",)))
    ops = build_plan(spec)
    overlays = [op for op in ops if op.fstype == "overlay"]
    assert [op.target for op in overlays] == ["/m/etc", "/m/usr"]
    assert "upperdir=/u/etc,workdir=/w/etc" in overlays[0].data
    assert any(op.kind == "bind" and op.target == "/m/mnt" for op in ops)
    assert any(op.fstype == "tmpfs" and op.target == "/m/tmp" for op in ops)


# -- id maps -------------------------------------------------------------------------------

def test_subid_ranges_by_name_and_uid(tmp_path: Path):
    f = tmp_path / "subuid"
    f.write_text("alice:100000:65536\n1001:300000:10\nbob:1:2\nbad line\nalice:x:1\n")
    assert idmap.read_subid_ranges(str(f), "alice", 1001) == [(100000, 65536), (300000, 10)]
    assert idmap.read_subid_ranges(str(tmp_path / "none"), "alice", 1) == []


def test_detect_mapping_falls_back_to_single_with_a_reason(monkeypatch):
    monkeypatch.setenv("SANDBOX_USERNS", "single")
    m = idmap.detect_mapping()
    assert m.mode == "single" and m.uid_map == (IdMap(0, os.getuid(), 1),)
    assert "forced" in m.reason


def test_map_text_and_args():
    maps = (IdMap(0, 1000, 1), IdMap(1, 100000, 65536))
    assert idmap._map_text(maps) == b"0 1000 1\n1 100000 65536\n"
    assert idmap._map_args(maps) == ["0", "1000", "1", "1", "100000", "65536"]


# -- paths ---------------------------------------------------------------------------------

def test_clean_container_path_clamps_at_root():
    assert clean_container_path("/../a/./b/../c") == "/a/c"


def test_resolve_in_root_keeps_symlinks_inside(tmp_path: Path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "abs").symlink_to("/etc")
    (root / "up").symlink_to("../../../../etc")
    (root / "loop").symlink_to("loop")
    assert resolve_in_root(str(root), "/abs/passwd") == str(root / "etc" / "passwd")
    assert resolve_in_root(str(root), "/up/x") == str(root / "etc" / "x")
    assert resolve_in_root(str(root), "/../../etc") == str(root / "etc")
    assert resolve_in_root(str(root), "/abs", follow_last=False) == str(root / "abs")
    with pytest.raises(OSError):
        resolve_in_root(str(root), "/loop/x")


def test_plan_targets_resolve_as_resolve_in_root_does_across_steps(tmp_path: Path):
    """The executor's cache of resolved directories gives what ``resolve_in_root`` would,
    links in a hostile image included, and forgets what a step made or mounted over."""
    from sandbox.runtime.init import _InRoot
    from sandbox.runtime.plan import MountOp

    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "etc").symlink_to("/real")                # absolute: restarts at the root
    (root / "real" / "hosts").symlink_to("../../../../outside")
    paths = _InRoot(str(root))
    for target in ("/etc/hosts", "/etc/hostname", "/etc/..", "/etc/../etc/x", "/real/hosts"):
        op = MountOp("bind", target, in_root=True)
        assert paths.path(op) == resolve_in_root(str(root), target)
        assert paths.path(op, follow_last=False) == resolve_in_root(str(root), target,
                                                                   follow_last=False)
        assert (paths.path(op) + "/").startswith(str(root) + "/")
    # a step makes /etc a directory of its own: what was resolved through the link is gone
    (root / "etc").unlink()
    (root / "etc").mkdir()
    paths.changed(MountOp("mount", "/etc", source="tmpfs", in_root=True))
    assert paths.path(MountOp("bind", "/etc/hosts", in_root=True)) == str(root / "etc" / "hosts")
    assert paths.path(MountOp("bind", "/x", source="/host")) == "/x"  # not in_root: as given


def test_plan_targets_skip_the_link_check_only_where_the_image_cannot_have_put_a_link(
        tmp_path: Path):
    """Inside a filesystem the plan mounted (the kernel's, or an empty tmpfs) a target's last
    component is not read as a link; a link the plan made there, a bind over part of it (a
    volume's files) and a ``..`` are still resolved as ``resolve_in_root`` does."""
    from sandbox.runtime.init import _InRoot
    from sandbox.runtime.plan import MountOp

    root = tmp_path / "root"
    (root / "dev" / "vol").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc" / "x").symlink_to("../../../outside")
    paths = _InRoot(str(root))
    dev = MountOp("mount", "/dev", source="tmpfs", fstype="tmpfs", in_root=True)
    paths.changed(dev, paths.path(dev))
    assert paths.path(MountOp("bind", "/dev/zero", in_root=True)) == str(root / "dev" / "zero")
    # the tmpfs is empty: a target in it is made first, once
    assert paths.new_in_empty("/dev/zero") and not paths.new_in_empty("/dev/zero")
    assert not paths.new_in_empty("/dev/vol/x") and not paths.new_in_empty("/etc/hosts")
    # the plan's own link: followed inside the root, as before
    (root / "dev" / "stdin").symlink_to("/etc/x")
    paths.changed(MountOp("symlink", "/dev/stdin", source="/etc/x", in_root=True))
    # a volume bound below /dev: its files are not the plan's
    vol = MountOp("bind", "/dev/vol", source="/host/vol", in_root=True)
    paths.changed(vol, paths.path(vol))
    (root / "dev" / "vol" / "link").symlink_to("/etc/x")
    # a bind over all of /dev hides the fresh /dev/shm below it
    shm = MountOp("mount", "/dev/shm", source="shm", fstype="tmpfs", in_root=True)
    (root / "dev" / "shm").mkdir()
    paths.changed(shm, paths.path(shm))
    paths.changed(MountOp("bind", "/dev", source="/host/dev", in_root=True), str(root / "dev"))
    assert not paths.new_in_empty("/dev/random") and not paths.new_in_empty("/dev/shm/y")
    (root / "dev" / "shm" / "link").symlink_to("/etc/x")
    for target in ("/dev/stdin", "/dev/vol/link", "/dev/../etc/x", "/dev/shm/link"):
        resolved = paths.path(MountOp("bind", target, in_root=True))
        assert resolved == resolve_in_root(str(root), target), target
        assert resolved.startswith(str(root) + "/"), target


# -- store ---------------------------------------------------------------------------------

def test_a_new_store_spreads_container_directories_where_the_fs_can(tmp_path: Path):
    import fcntl
    import sys

    store = Store(tmp_path / "s").ensure()
    fd = os.open(store.containers_dir(), os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = int.from_bytes(fcntl.ioctl(fd, 0x80086601, bytes(8))[:4], sys.byteorder)
    except OSError:
        pytest.skip("this filesystem has no inode flags")
    finally:
        os.close(fd)
    ext4 = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True,
                          text=True, check=False).stdout.strip() == "ext2/ext3"
    if not ext4:
        pytest.skip("the top-directory flag is ext4's")
    assert flags & 0x00020000  # FS_TOPDIR_FL, chattr +T


def test_store_layout_comes_back_where_a_directory_was_removed_by_hand(tmp_path: Path):
    Store(tmp_path / "s").ensure()
    for sub in ("containers", "blobs/sha256", "locks"):
        os.rmdir(tmp_path / "s" / sub)
    Store(tmp_path / "s").ensure()
    for sub in ("containers", "blobs/sha256", "locks", "layers", "tmp", "mnt", "volumes"):
        assert (tmp_path / "s" / sub).is_dir(), sub


def test_store_blobs_are_verified_while_streaming(tmp_path: Path):
    store = Store(tmp_path / "s").ensure()
    digest = store.put_blob(b"hello")
    assert store.read_blob(digest) == b"hello"
    with pytest.raises(errors.DigestMismatch, match="truncated"):
        store.ingest_blob("sha256:" + "0" * 64, [b"abc"], size=4)
    with pytest.raises(errors.DigestMismatch, match="hashes to"):
        store.ingest_blob("sha256:" + "0" * 64, [b"abc"], size=3)
    assert not store.has_blob("sha256:" + "0" * 64)
    assert os.listdir(store.tmp_dir) == []


def test_store_refuses_bad_digests_and_foreign_versions(tmp_path: Path):
    store = Store(tmp_path / "s").ensure()
    with pytest.raises(errors.StoreError, match="invalid digest"):
        store.blob_path("sha256:../../etc")
    (tmp_path / "s" / "version").write_text("99\n")
    with pytest.raises(errors.StoreError, match="version 99"):
        Store(tmp_path / "s").ensure()


def test_rm_rf_only_under_the_root_and_through_read_only_dirs(tmp_path: Path):
    root = tmp_path / "root"
    victim = root / "a" / "b"
    victim.mkdir(parents=True)
    (victim / "f").write_text("x")
    os.chmod(victim, 0o500)
    rm_rf(str(root / "a"), under=str(root))
    assert not (root / "a").exists()
    with pytest.raises(errors.StoreError, match="refusing"):
        rm_rf(str(tmp_path), under=str(root))
    with pytest.raises(errors.StoreError, match="refusing"):
        rm_rf(str(root), under=str(root))


def test_errors_render_as_one_line():
    err = errors.SandboxError("bad\nthing", hint="do  this")
    assert err.one_line() == "bad thing (do this)"
    assert errors.CommandNotFound("x").exit_code == 127
    assert errors.CommandNotExecutable("x").exit_code == 126


@pytest.mark.parametrize(("sysctls", "err", "expected"), [
    ({"/proc/sys/user/max_user_namespaces": "0"}, 1, "user.max_user_namespaces=0"),
    ({"/proc/sys/kernel/unprivileged_userns_clone": "0"}, 1,
     "sysctl -w kernel.unprivileged_userns_clone=1"),
    ({"/proc/sys/kernel/apparmor_restrict_unprivileged_userns": "1"}, 13,
     "kernel.apparmor_restrict_unprivileged_userns=0"),
    ({}, 22, "multi-threaded"),
    ({}, 28, "limit of user namespaces"),
])
def test_userns_refusal_names_the_cause_and_fix(sysctls, err, expected):
    from sandbox.runtime.init import userns_failure_message

    message = userns_failure_message(err, read=lambda p: sysctls.get(p, ""))
    assert expected in message and "\n" not in message


def test_records_behave_as_frozen_dataclasses():
    from sandbox._record import FrozenInstanceError, asdict, fields

    spec = make_spec()
    with pytest.raises(FrozenInstanceError):
        spec.name = "x"  # type: ignore[misc]
    assert replace(spec, name="x") != spec and replace(spec, name="x").name == "x"
    assert replace(spec) == spec and hash(replace(spec)) == hash(spec)
    assert fields(spec)[:3] == ("id", "name", "image")
    assert asdict(IdMap(0, 1, 2)) == {"container_id": 0, "host_id": 1, "size": 2}
    assert IdMap(0, 1, 2) == IdMap(container_id=0, host_id=1, size=2)
    with pytest.raises(TypeError):
        replace(spec, nope=1)
    a, b = make_spec(), make_spec()
    assert a.labels is not b.labels  # default_factory: a fresh dict each time
    assert "ContainerSpec(id=" in repr(a)


def test_run_path_does_not_import_dataclasses():
    import subprocess
    import sys

    code = ("import sys, sandbox.cli.run, sandbox.lifecycle, sandbox.containers, "
            "sandbox.runtime.process; print('dataclasses' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"


def test_pack_ints_is_structs_native_layout():
    import struct

    from sandbox._syscalls import pack_ints, unpack_ints

    assert pack_ints((1, -2, 2**31 - 1)) == struct.pack("3i", 1, -2, 2**31 - 1)
    assert pack_ints((0x20080522, 2**32 - 1), signed=False) == struct.pack("II", 0x20080522,
                                                                            2**32 - 1)
    assert unpack_ints(struct.pack("3i", 7, -1, 0) + b"\0") == [7, -1, 0]  # partial: ignored
    assert unpack_ints(struct.pack("16sh14x", b"lo", 0x49)[16:18], 2) == [0x49]


def test_a_network_namespace_the_parent_could_not_make_fails_the_setup_with_its_reason():
    from sandbox import _sock
    from sandbox.runtime.init import SetupFailed, _join_net

    ours, theirs = _sock.socketpair()
    try:
        ours.send(b"XNo space left on device")
        with pytest.raises(SetupFailed, match="network namespace could not be made: No space"):
            _join_net(theirs)
        ours.close()  # the parent died before sending anything
        with pytest.raises(SetupFailed, match="the caller is gone"):
            _join_net(theirs)
    finally:
        theirs.close()


@pytest.mark.parametrize("ts", [0.0, 1796677157.331726, 1796677157.9999999999, 951782400.5])
def test_state_timestamps_are_dockers_shape_and_read_back(ts: float):
    import time

    from sandbox import _cstate as cs

    text = cs.rfc3339(ts)
    whole = int(ts) + (1 if round((ts - int(ts)) * 1e9) >= 1e9 else 0)
    assert text.startswith(time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(whole)))
    assert text.endswith("Z") and len(text) == 30
    assert abs(cs.parse_time(text) - ts) < 1e-6


def test_moving_off_a_cpu_changes_nothing_where_there_is_nowhere_to_go():
    """The CLI moves off PID 1's CPU while it makes the network namespace, and back: where it
    may run on one CPU only, or the CPU is not one of its own, nothing changes."""
    from procs import in_child

    from sandbox.runtime.process import _move_off

    def check() -> str:
        mask = os.sched_getaffinity(0)
        assert _move_off(-1) == set() and os.sched_getaffinity(0) == mask
        one = min(mask)
        os.sched_setaffinity(0, {one})
        assert _move_off(one) == set() and os.sched_getaffinity(0) == {one}
        os.sched_setaffinity(0, mask)
        if len(mask) > 1:
            assert _move_off(one) == mask and os.sched_getaffinity(0) == mask - {one}
        return "ok"

    assert in_child(check) == "ok"
