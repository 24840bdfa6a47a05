"""fuse_overlay as a process and on disk: the command line, and uppers shared with the kernel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fo_scenarios
import pytest
from fo_support import fuse_overlayfs_reason, kernel_overlay_reason, run_harness

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
          "rename-over-whiteout", "xattrs", "chmod"]


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


@pytest.mark.parametrize("writer, reader", [("fuse", "fuse-overlayfs"), ("fuse-overlayfs", "fuse")])
def test_upper_compatible_with_fuse_overlayfs(tmp_path: Path, writer: str, reader: str) -> None:
    reason = fuse_overlayfs_reason()
    if reason:
        pytest.skip(reason)
    answer = run_harness({"root": str(tmp_path), "mode": "compat", "name": "rename-exdev",
                          "pairs": [[writer, reader]]})
    result = answer[f"{writer}->{reader}"]
    assert "exception" not in result, result.get("exception")
    assert result["read"] == result["written"]


def test_scenarios_listed() -> None:
    assert set(COMPAT) <= set(fo_scenarios.SCENARIOS)
