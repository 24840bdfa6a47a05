"""cgroup v2 delegation, limits, freezer and stats against a cgroupfs-shaped directory tree.

The kernel's side (a cgroup enforcing memory.max) needs a host with a delegated cgroup v2 tree;
these tests pin what we write where, and which tree we pick, on any host.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox import _cgroups

pytestmark = pytest.mark.skipif(os.geteuid() == 0, reason="access() ignores modes for root")

USER_SVC = "user.slice/user-1000.slice/user@1000.service"
KERNEL_FILES = ("cgroup.procs", "cgroup.subtree_control", "cgroup.freeze", "cgroup.events",
                "memory.max", "memory.swap.max", "memory.current", "cpu.max", "cpu.stat",
                "pids.max", "pids.current")


def make_tree(tmp_path: Path, *, delegated: str = USER_SVC,
              controllers: str = "cpu memory pids") -> tuple[str, str]:
    """A unified hierarchy where ``delegated`` is ours and everything above is read-only."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    own = root / USER_SVC / "app.slice" / "term.scope"
    own.mkdir(parents=True)
    d = own
    while d != root:
        (d / "cgroup.procs").write_text("")
        (d / "cgroup.subtree_control").write_text(
            controllers + "\n" if d == root / delegated else "")
        if not str(d).startswith(str(root / delegated)):
            for f in ("cgroup.procs", "cgroup.subtree_control"):
                (d / f).chmod(0o444)
        d = d.parent
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(f"0::/{USER_SVC}/app.slice/term.scope\n")
    return str(root), str(proc)


@pytest.fixture(autouse=True)
def _fresh_cache():
    _cgroups._cache.clear()
    yield
    _cgroups._cache.clear()


def test_v1_and_hybrid_hosts_say_why(tmp_path: Path):
    root = tmp_path / "cg"
    root.mkdir()
    assert _cgroups.find_delegation(str(root), "/dev/null") is None
    assert _cgroups.reason(str(root), "/dev/null") == \
        "cgroups v1 cannot be delegated to an unprivileged user"
    (root / "unified").mkdir()
    (root / "unified" / "cgroup.controllers").write_text("")
    _cgroups._cache.clear()
    assert "hybrid mode" in _cgroups.reason(str(root), "/dev/null")


def test_the_highest_cgroup_we_own_is_the_delegated_one(tmp_path: Path):
    root, proc = make_tree(tmp_path)
    deleg = _cgroups.find_delegation(root, proc)
    assert deleg is not None
    assert deleg.base == os.path.join(root, USER_SVC)
    assert deleg.controllers == {"cpu", "memory", "pids"}
    assert _cgroups.reason(root, proc, controller="memory") == ""


def test_nothing_delegated_is_reported(tmp_path: Path):
    root, proc = make_tree(tmp_path, delegated="nowhere")
    assert _cgroups.find_delegation(root, proc) is None
    assert _cgroups.reason(root, proc) == \
        "no cgroup v2 subtree is delegated to this user (systemd Delegate=yes)"


def test_a_controller_not_delegated_is_named(tmp_path: Path):
    root, proc = make_tree(tmp_path, controllers="memory pids")
    assert _cgroups.reason(root, proc, controller="cpu") == \
        "the cpu controller is not delegated to this user (enabled: memory pids)"


def test_limit_files_are_dockers_values():
    assert _cgroups.limit_files({"memory": 64 << 20, "nano_cpus": 1_500_000_000,
                                 "pids_limit": 50}) == {
        "memory.max": "67108864", "memory.swap.max": "67108864",
        "cpu.max": "150000 100000", "pids.max": "50"}
    assert _cgroups.limit_files({"nano_cpus": 1}) == {"cpu.max": "1000 100000"}  # the minimum
    assert _cgroups.limit_files({}) == {}


def _kernel_files(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for f in KERNEL_FILES:
        (path / f).write_text("")


def test_create_enables_controllers_and_writes_limits(tmp_path: Path):
    root, proc = make_tree(tmp_path)
    deleg = _cgroups.find_delegation(root, proc)
    assert deleg is not None
    cid = "c" * 64
    _kernel_files(Path(deleg.base, "sandbox", cid))  # what mkdir makes on a real cgroupfs
    Path(deleg.base, "sandbox", "cgroup.subtree_control").write_text("")
    path = _cgroups.create(deleg, cid, {"memory": 1 << 30, "pids_limit": 7})
    assert path == os.path.join(deleg.base, "sandbox", cid)
    assert Path(deleg.base, "sandbox", "cgroup.subtree_control").read_text() == \
        "+cpu +memory +pids"
    assert Path(path, "memory.max").read_text() == str(1 << 30)
    assert Path(path, "pids.max").read_text() == "7"
    assert Path(path, "cpu.max").read_text() == ""  # not asked for: left alone
    _cgroups.enter(path, 4242)
    assert Path(path, "cgroup.procs").read_text() == "4242"


def test_freeze_and_stats_read_the_cgroup(tmp_path: Path):
    cg = tmp_path / "cg"
    _kernel_files(cg)
    (cg / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    assert _cgroups.freeze(str(cg), True) is True
    assert (cg / "cgroup.freeze").read_text() == "1"
    assert _cgroups.freeze(str(tmp_path / "no-such"), True) is False
    assert _cgroups.freeze("", True) is False
    (cg / "memory.current").write_text("123456\n")
    (cg / "memory.max").write_text("max\n")
    (cg / "pids.current").write_text("3\n")
    (cg / "cpu.stat").write_text("usage_usec 5000\nuser_usec 4000\n")
    assert _cgroups.read_stats(str(cg)) == {"memory": 123456, "pids": 3, "memory_limit": 0,
                                            "cpu_usec": 5000}
    assert _cgroups.read_stats("") is None


def test_remove_takes_the_empty_cgroup_away(tmp_path: Path):
    cg = tmp_path / "empty"
    cg.mkdir()
    _cgroups.remove(str(cg))
    assert not cg.exists()
    _cgroups.remove(str(cg))  # gone already: fine
    _cgroups.remove("")
