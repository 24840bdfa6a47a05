"""Storage drivers: each gives the same container filesystem; none leaves anything behind."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.requires_userns

DRIVERS = ["overlay", pytest.param("fuse", marks=pytest.mark.requires_fuse), "copy"]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.parametrize("driver", DRIVERS)
def test_every_driver_gives_a_private_writable_root(cli, busybox_image, driver):
    script = ("echo data > /etc/new && rm /bin/ls && mkdir -p /a/b && "
              "cat /etc/new && test ! -e /bin/ls && mount | head -1")
    r = cli("run", "--rm", "--storage-driver", driver, busybox_image, "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("data\n")
    again = cli("run", "--rm", "--storage-driver", driver, busybox_image, "sh", "-c",
                "test ! -e /etc/new && test -e /bin/ls")
    assert again.returncode == 0, again.stderr


@pytest.mark.requires_fuse
def test_every_driver_shows_the_same_owners(cli, busybox_image):
    """The image's /home/app belongs to 1000. With subordinate ranges every driver shows 1000;
    in single-uid mode (no uid 1000 to show) kernel overlay and copy show root, and so must
    fuse, rather than nobody, which root in the container could not write to."""
    script = "ls -ldn /home/app /etc/passwd | awk '{print $1, $3, $4, $NF}'; touch /home/app/x"
    seen = {}
    for driver in ("overlay", "fuse", "copy"):
        r = cli("run", "--rm", "--storage-driver", driver, busybox_image, "sh", "-c", script)
        seen[driver] = (r.returncode, r.stdout, r.stderr)
    assert seen["overlay"][0] == 0, seen
    assert all(v == seen["overlay"] for v in seen.values()), seen


@pytest.mark.requires_fuse
def test_fuse_driver_mounts_fuse_overlay_as_root(cli, busybox_image):
    r = cli("run", "--rm", "--storage-driver", "fuse", busybox_image, "sh", "-c",
            "grep ' / ' /proc/mounts; ps -o args")
    assert "fuse" in r.stdout.split("\n")[0]
    assert "fuse_overlay" not in r.stdout.split("\n", 1)[1], "the FUSE server is visible"


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a live process, None when it has gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return int(fields[1]), fields[19]


def _tree(root: int) -> dict[int, tuple[int, str]]:
    """``root`` and its descendants: pid -> (parent pid, start time)."""
    procs = {int(p): st for p in os.listdir("/proc") if p.isdigit()
             and (st := _stat(int(p))) is not None}
    tree = {root: procs[root]}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, start) in procs.items():
            if ppid in tree and pid not in tree:
                tree[pid] = (ppid, start)
                grew = True
    return tree


def _still_running(tree: dict[int, tuple[int, str]]) -> dict[int, str]:
    """The processes of ``tree`` that still run (same pid and start time): pid -> cmdline."""
    return {pid: _cmdline(pid) for pid, (_, start) in tree.items()
            if (st := _stat(pid)) is not None and st[1] == start}


def _mounts_under(path: str) -> list[str]:
    """Mounts at or below ``path`` in the mount namespace of any process we can see: a mount
    lives as long as one process of its namespace does, wherever that process is."""
    seen: set[str] = set()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            ns = os.readlink(f"/proc/{pid}/ns/mnt")
            if ns in seen:
                continue
            with open(f"/proc/{pid}/mountinfo") as f:
                lines = f.readlines()
        except OSError:
            continue
        seen.add(ns)
        found += [f"{pid}: {line.strip()}" for line in lines
                  if (line.split()[4] + "/").startswith(path + "/")]
    return found


def _held_locks(store: Path) -> list[str]:
    held = []
    for name in os.listdir(store / "locks"):
        fd = os.open(store / "locks" / name, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held.append(name)
        finally:
            os.close(fd)
    return held


def _end(proc: subprocess.Popen[str], ending: str, tree: dict[int, tuple[int, str]]) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    if ending == "exit":
        proc.stdin.write("go\n")
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
        assert proc.stdout.read() == "bye\n"
        return
    if ending == "sigkill-engine":  # the namespace holder first: it must get no chance to clean
        for pid, (ppid, _) in tree.items():
            if ppid == proc.pid:
                os.kill(pid, signal.SIGKILL)
    proc.kill()
    proc.wait(timeout=10)


@pytest.mark.requires_fuse
@pytest.mark.parametrize("ending", ["exit", "sigkill-cli", "sigkill-engine"])
def test_fuse_driver_leaves_nothing_behind(cli, busybox_image, session_store: Path, ending):
    """After ``run --rm`` ends (by itself; by SIGKILL of the CLI; by SIGKILL of the CLI and of
    its namespace holder, so that only PDEATHSIG is left to clean up) no server, engine or
    container process runs, no process's mount namespace holds the container's mount, no store
    lock is held, and the container is gone (the next ``ps`` reaps what SIGKILL left)."""
    containers = session_store / "containers"
    before = set(os.listdir(containers)) if containers.exists() else set()
    proc = cli.popen("run", "--rm", "-i", "--storage-driver", "fuse", busybox_image, "sh", "-c",
                     "echo ready; read line; echo bye", stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tree: dict[int, tuple[int, str]] = {}
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        (cid,) = {n for n in set(os.listdir(containers)) - before if len(n) == 64}
        cdir = str(containers / cid)
        tree = _tree(proc.pid)
        servers = [pid for pid in tree if "fuse_overlay" in _cmdline(pid)]
        assert len(servers) == 1 and cdir in _cmdline(servers[0]), tree
        assert any(" fuse" in m for m in _mounts_under(cdir)), "the mount check sees nothing"
        # the command prints "ready" as soon as it runs, a moment before the CLI records the
        # container running (with itself as owner): the SIGKILLs are for a running container
        deadline = time.monotonic() + 10
        while (not os.path.exists(os.path.join(cdir, "state.json"))
               and time.monotonic() < deadline):
            time.sleep(0.02)
        _end(proc, ending, tree)
        deadline = time.monotonic() + 15
        while (_still_running(tree) or _mounts_under(cdir)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _still_running(tree), f"left running: {_still_running(tree)}"
        assert not _mounts_under(cdir), f"left mounted: {_mounts_under(cdir)}"
        assert not _held_locks(session_store)
        if ending == "sigkill-engine":  # nothing of ours was left to remove it: the next
            r = cli("ps", "-a", "--no-trunc")  # command that reads the store reaps it
            assert r.returncode == 0 and cid not in r.stdout, r.stdout + r.stderr
        while os.path.exists(cdir) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not os.path.exists(cdir), os.listdir(cdir)
        cli("ps", "-a")  # what a SIGKILL left of the owned marker goes with the next cleanup
        assert not os.path.exists(cdir + ".owned")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _still_running(tree):  # a failed test leaves nothing running either
            os.kill(pid, signal.SIGKILL)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def test_driver_choice_is_probed_and_explained(cli):
    import json

    info = json.loads(cli("info", "--format", "json").stdout)
    driver = info["storage_driver"]
    assert driver["probes"]["overlay"] in ("ok",) or driver["name"] != "overlay"
    assert driver["reason"]
