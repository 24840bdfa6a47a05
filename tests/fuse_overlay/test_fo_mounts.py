"""fuse_overlay as a process and on disk: the command line, and uppers shared with the kernel."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import fo_scenarios
import pytest
from fo_harness import command_pids
from fo_support import (
    MULTI_UID,
    fuse_overlayfs_reason,
    kernel_overlay_reason,
    multi_uid_reason,
    run_harness,
)

pytestmark = [pytest.mark.requires_userns, pytest.mark.requires_fuse]


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_harness({"root": str(tmp_path_factory.mktemp("cli")), "mode": "cli"})  # type: ignore[no-any-return]


def test_daemon_returns_once_mount_is_live(cli: dict[str, Any]) -> None:
    assert cli["daemon_rc"] == 0
    assert cli["live_on_return"]
    assert cli["server_running"]


def test_server_exits_when_unmounted(cli: dict[str, Any]) -> None:
    assert cli["server_exited_after_umount"]


def test_die_with_parent_leaves_no_mount_or_process(cli: dict[str, Any]) -> None:
    assert cli["die_with_parent_mounted"]
    assert cli["die_with_parent_cleaned"]


def test_user_namespace_defaults(cli: dict[str, Any]) -> None:
    assert cli["allow_other"]
    assert cli["default_permissions"]


def test_every_file_reports_the_mount_st_dev(cli: dict[str, Any]) -> None:
    assert cli["one_st_dev"]


def test_unknown_option_is_one_line_exit_1(cli: dict[str, Any]) -> None:
    assert cli["bad_option"] == [1, 1, True]
    assert cli["bad_mountpoint_rc"] == 1


COMPAT = ["rename-exdev", "whiteout-recreate-dir", "dir-to-file", "unlink", "rmdir",
          "rename-over-whiteout", "xattrs", "chmod", "hard-link", "mkdir", "symlink",
          "rename-file", "whiteout-chardev-xattr-lower", "no-stray-whiteouts"]
# fuse-overlayfs reads and writes formats the kernel does not: .wh. files, .wh..wh..opq,
# user.fuseoverlayfs.opaque, override_stat
FUSE_OVERLAYFS_COMPAT = [*COMPAT, "whiteout-files-lower", "opaque-fuseoverlayfs-xattr-lower",
                         "override-stat"]


@pytest.mark.parametrize("name", COMPAT)
@pytest.mark.parametrize("writer, reader", [("fuse", "kernel"), ("kernel", "fuse")])
def test_upper_compatible_with_kernel(tmp_path: Path, name: str, writer: str, reader: str) -> None:
    """An upper written by one implementation reads the same through the other (userxattr)."""
    reason = kernel_overlay_reason()
    if reason:
        pytest.skip(reason)
    answer = run_harness({"root": str(tmp_path), "mode": "compat", "name": name,
                          "pairs": [[writer, reader]]})
    result = answer[f"{writer}->{reader}"]
    assert "exception" not in result, result.get("exception")
    assert result["read"] == result["written"]


@pytest.mark.parametrize("name", FUSE_OVERLAYFS_COMPAT)
@pytest.mark.parametrize("writer, reader", [("fuse", "fuse-overlayfs"), ("fuse-overlayfs", "fuse")])
def test_upper_compatible_with_fuse_overlayfs(
    tmp_path: Path, name: str, writer: str, reader: str,
) -> None:
    """The reader sees the other's upper exactly as it sees an upper it wrote itself (the same
    scenario, same layers): fuse-overlayfs' own quirks, such as st_nlink 1 for a hard link it
    did not make in this mount, are then the same on both sides."""
    reason = fuse_overlayfs_reason()
    if reason:
        pytest.skip(reason)
    answer = run_harness({"root": str(tmp_path), "mode": "compat", "name": name,
                          "pairs": [[writer, reader], [reader, reader]]})
    theirs, own = answer[f"{writer}->{reader}"], answer[f"{reader}->{reader}"]
    for result in (theirs, own):
        assert "exception" not in result, result.get("exception")
    if name == "override-stat":
        fo_view = next(v for k, v in answer.items() if k.startswith("fuse-overlayfs->"))["written"]
        if fo_view["d"]["mode"] != "0o40700":  # the lower's override says 0700
            pytest.skip("this fuse-overlayfs ignores user.containers.override_stat")
    assert theirs["read"] == own["read"]
    if reader == "fuse":  # and what fuse_overlay reads is what fuse-overlayfs showed writing
        assert theirs["read"] == theirs["written"]


def test_scenarios_listed() -> None:
    assert set(FUSE_OVERLAYFS_COMPAT) <= set(fo_scenarios.SCENARIOS)


# -- options and the command as fuse-overlayfs' stand-in ------------------------------------------


@pytest.fixture(scope="module")
def options(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_harness({"root": str(tmp_path_factory.mktemp("options")), "mode": "options"})  # type: ignore[no-any-return]


def test_debug_serves_in_the_foreground_with_libfuse_trace(options: dict[str, Any]) -> None:
    """``-d`` as fuse-overlayfs: foreground (no fork), libfuse's request trace on stderr."""
    assert options["debug_mounted"]
    assert options["debug_foreground"]
    assert options["debug_libfuse_trace"]
    assert options["debug_rc"] == 0


def test_console_script_is_installed_and_mounts(options: dict[str, Any]) -> None:
    from importlib import metadata

    scripts = metadata.entry_points(group="console_scripts", name="fuse-overlay")
    if not scripts:
        pytest.skip("the rootless-sandbox distribution is not installed (no console scripts)")
    assert [ep.value for ep in scripts] == ["fuse_overlay.__main__:main"]
    assert options["script_exists"], "fuse-overlay is not installed next to this Python"
    assert options["script_rc"] == 0
    assert options["script_live"]
    assert options["script_server"]


def test_fusermount3_u_ends_the_server(options: dict[str, Any]) -> None:
    if not options["script_exists"]:
        pytest.skip("no fuse-overlay console script to start the server with")
    assert options["fusermount3_rc"] == [0, ""]
    assert options["unmounted_after_fusermount3"]
    assert options["server_exited_after_fusermount3"]


def test_volatile_keeps_fsync_off_the_upper(options: dict[str, Any]) -> None:
    """fsync/fdatasync through the mount reach the upper file unless ``volatile``; the data is
    written either way."""
    default, volatile = options["fsync_default"], options["fsync_volatile"]
    assert default["rc"] == volatile["rc"] == 0
    assert sorted(default["calls"]) == ["fdatasync", "fsync", "fsync"]
    assert volatile["calls"] == []
    for run in (default, volatile):
        assert run["upper"] == "data\nmore\n"
        assert run["a"] == "Aower a\n"


@pytest.fixture(scope="module")
def multiuid(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    reason = multi_uid_reason()
    if reason:
        pytest.skip(reason)
    return run_harness({"root": str(tmp_path_factory.mktemp("multiuid")), "mode": "multiuid"},  # type: ignore[no-any-return]
                       unshare=MULTI_UID)


def test_explicit_allow_other_lets_other_uids_in(multiuid: dict[str, Any]) -> None:
    seen = multiuid["allow_other"]
    assert seen["allow_other"]
    assert seen["ls"][0] == 0 and "only_top" in seen["ls"][1]
    assert seen["cat"] == [0, "top a\n"]


def test_posix_acls_are_enforced_unless_noacl(multiuid: dict[str, Any]) -> None:
    """ACLs on (as fuse-overlayfs): an ACL entry lets uid 1000 read a 0600 file it could not
    read before.  ``noacl``: the kernel refuses ACLs on the mount, the file stays closed."""
    acl, noacl = multiuid["allow_other"], multiuid["noacl"]
    assert acl["secret_before_acl"] and noacl["secret_before_acl"]
    assert acl["setacl"] == "ok"
    assert acl["secret_after_acl"] == [0, "s\n"]
    assert noacl["setacl"] == "ENOTSUP"
    assert noacl["secret_after_acl"][0] != 0


# -- outside a user namespace: fusermount3 mounts, no default_permissions -------------------------


def _start_outside(opts: str, mnt: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fuse_overlay", "-o", opts, str(mnt)],
                          capture_output=True, text=True, timeout=60)


def _unmount_outside(mnt: Path) -> bool:
    """``fusermount3 -u``; True once the server has exited too."""
    subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
    deadline = time.monotonic() + 20
    while command_pids(mnt):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return not os.path.ismount(mnt)


def _mount_line(mnt: Path) -> str:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return next((ln for ln in lines if f" {mnt} " in ln), "")


MODES = {"none": 0o000, "r": 0o400, "w": 0o200, "x": 0o100, "rw": 0o600, "rwx": 0o700,
         "group_only": 0o070, "exe": 0o755}


@pytest.mark.parametrize("upper", [True, False], ids=["union", "read-only-union"])
def test_access_answered_by_fuse_overlay(tmp_path: Path, upper: bool) -> None:
    """Without default_permissions (outside a user namespace, ``noacl``) the kernel asks the
    file system: access(2) must answer as the lower directory itself does, and W_OK is EROFS
    on a read-only union."""
    lower, up, work, mnt = (tmp_path / n for n in ("l", "u", "w", "m"))
    for d in (lower, up, work, mnt):
        d.mkdir()
    for name, mode in MODES.items():
        (lower / name).write_text(name)
        (lower / name).chmod(mode)
    (lower / "d").mkdir(mode=0o500)
    opts = f"lowerdir={lower},noacl" + (f",upperdir={up},workdir={work}" if upper else "")
    started = _start_outside(opts, mnt)
    assert started.returncode == 0, started.stderr
    try:
        assert "default_permissions" not in _mount_line(mnt)
        names = [*MODES, "d", "missing"]
        flags = {"F": os.F_OK, "R": os.R_OK, "W": os.W_OK, "X": os.X_OK, "RW": 6}
        seen = {n: {k: os.access(mnt / n, f) for k, f in flags.items()} for n in names}
        want = {n: {k: os.access(lower / n, f) and not (f & os.W_OK and not upper)
                    for k, f in flags.items()} for n in names}
        assert seen == want
        if upper:
            os.chmod(mnt / "r", 0o600)  # copied up: answered from the upper copy now
            assert os.access(mnt / "r", os.R_OK | os.W_OK)
            assert not os.access(mnt / "r", os.X_OK)
    finally:
        assert _unmount_outside(mnt)


def test_fusermount3_u_outside_a_user_namespace(tmp_path: Path) -> None:
    lower, mnt = tmp_path / "l", tmp_path / "m"
    lower.mkdir()
    mnt.mkdir()
    (lower / "f").write_text("f")
    started = _start_outside(f"lowerdir={lower}", mnt)
    assert started.returncode == 0, started.stderr
    assert (mnt / "f").read_text() == "f"
    assert command_pids(mnt)
    assert _unmount_outside(mnt)


def test_explicit_allow_other_outside_a_user_namespace(tmp_path: Path) -> None:
    """Granted as fusermount3 grants it: with user_allow_other in /etc/fuse.conf; otherwise a
    one-line error naming what to change, and no mount."""
    lower, mnt = tmp_path / "l", tmp_path / "m"
    lower.mkdir()
    mnt.mkdir()
    try:
        conf = Path("/etc/fuse.conf").read_text().splitlines()
    except OSError:
        conf = []
    allowed = any(ln.split("#", 1)[0].strip() == "user_allow_other" for ln in conf)
    started = _start_outside(f"lowerdir={lower},allow_other", mnt)
    if allowed or os.getuid() == 0:
        assert started.returncode == 0, started.stderr
        try:
            assert "allow_other" in _mount_line(mnt)
        finally:
            assert _unmount_outside(mnt)
    else:
        assert started.returncode == 1
        assert started.stderr.count("\n") == 1
        assert "user_allow_other" in started.stderr
        assert not os.path.ismount(mnt)
