"""The storage driver is chosen by real probes: fuse where kernel overlay fails, copy where both do.

The kernel-overlay probe is made to fail by the cached answer the engine keeps in the store (as a
kernel without overlay in user namespaces would leave it); the FUSE probe is made to fail for real
by pointing the bindings at a libfuse that does not exist (as a machine without libfuse is).
Each choice then runs a container and checks its root filesystem.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.requires_userns

NO_OVERLAY = "kernel overlay refused by this test"
NO_LIBFUSE = {"FUSE_LIBRARY_PATH": "/nonexistent/libfuse3.so.3"}
SCRIPT = ("grep ' / ' /proc/mounts; echo data > /etc/new && cat /etc/new && rm /bin/ls && "
          "test ! -e /bin/ls && mkdir -p /a/b && test -d /a/b")


@pytest.fixture
def store(tmp_path: Path, busybox_tar: Path) -> Path:
    """A store of its own (its probe cache is the test's), with busybox, where kernel overlay
    is known not to work."""
    from sandbox.images import ImageStore
    from sandbox.store import Store

    root = tmp_path / "store"
    ImageStore(Store(str(root))).import_rootfs(str(busybox_tar), ["busybox"])
    (root / "driver-probe.json").write_text(json.dumps(
        {"kernel": os.uname().release, "probes": {"overlay": NO_OVERLAY}}))
    return root


@pytest.fixture
def cli(cli, store: Path):
    """The ``sandbox`` command on the test's store, in an environment that forces nothing (the
    suite may run with ``SANDBOX_STORAGE_DRIVER`` set)."""
    env = {k: v for k, v in cli.env.items()
           if k not in ("SANDBOX_STORAGE_DRIVER", "FUSE_LIBRARY_PATH", "FUSE_LIBRARY_NAME")}
    return type(cli)({**env, "SANDBOX_ROOT": str(store)})


def _info(cli, env: dict[str, str]) -> dict:
    r = cli("info", "--format", "json", env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["storage_driver"]


def _run_and_check(cli, env: dict[str, str], name: str) -> tuple[str, str]:
    """Run the script in a container named ``name``; the driver it got and its root mount."""
    r = cli("run", "--name", name, "busybox", "sh", "-c", SCRIPT, env=env)
    try:
        assert r.returncode == 0, r.stderr
        root_mount, rest = r.stdout.split("\n", 1)
        assert rest == "data\n"
        inspect = cli("inspect", name, env=env)
        assert inspect.returncode == 0, inspect.stderr
        driver = json.loads(inspect.stdout)[0]["GraphDriver"]["Name"]
    finally:
        cli("rm", "-f", name, env=env)
    again = cli("run", "--rm", "busybox", "sh", "-c", "test ! -e /etc/new && test -e /bin/ls",
                env=env)
    assert again.returncode == 0, "a second container saw the first one's changes"
    return driver, root_mount


@pytest.mark.requires_fuse
def test_fuse_is_chosen_when_kernel_overlay_fails(cli, store: Path):
    env: dict[str, str] = {}
    choice = _info(cli, env)
    assert choice["name"] == "fuse"
    assert NO_OVERLAY in choice["reason"]
    assert choice["probes"] == {"overlay": NO_OVERLAY, "fuse": "ok"}
    driver, root_mount = _run_and_check(cli, env, "chose-fuse")
    assert driver == "fuse"
    assert root_mount.split()[2].startswith("fuse"), root_mount


@pytest.mark.requires_fuse
def test_a_normal_run_does_not_probe_again(cli, store: Path):
    env: dict[str, str] = {}
    assert _info(cli, env)["name"] == "fuse"  # probes FUSE once and caches the answer
    cache = store / "driver-probe.json"
    before = cache.stat()
    r = cli("run", "--rm", "busybox", "true", env=env)
    assert r.returncode == 0, r.stderr
    after = cache.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not os.listdir(store / "tmp"), "a probe's directory was made (or left)"


def test_copy_is_chosen_when_fuse_fails_too(cli, store: Path):
    env = NO_LIBFUSE
    choice = _info(cli, env)
    assert choice["name"] == "copy"
    fuse = choice["probes"]["fuse"]
    assert fuse != "ok"
    if os.path.exists("/dev/fuse") and os.access("/dev/fuse", os.R_OK | os.W_OK):
        assert "/nonexistent/libfuse3.so.3" in fuse, "the server's own reason is not shown"
    assert NO_OVERLAY in choice["reason"] and fuse in choice["reason"]
    text = cli("info", env=env).stdout
    assert f"probe fuse: {fuse}" in text
    driver, root_mount = _run_and_check(cli, env, "chose-copy")
    assert driver == "copy"
    assert not root_mount.split()[2].startswith("fuse"), root_mount


@pytest.mark.requires_fuse
def test_a_fixed_machine_is_noticed(cli, store: Path):
    assert _info(cli, NO_LIBFUSE)["name"] == "copy"
    choice = _info(cli, {})  # libfuse "installed" again: the FUSE answer is stale
    assert choice["name"] == "fuse"
    assert choice["probes"]["fuse"] == "ok"


@pytest.mark.requires_fuse
def test_forced_fuse_that_cannot_mount_says_why_in_one_line(cli, store: Path):
    env = {"SANDBOX_STORAGE_DRIVER": "fuse", **NO_LIBFUSE}
    r = cli("run", "--rm", "busybox", "true", env=env)
    assert r.returncode == 125
    assert r.stderr.count("\n") == 1, r.stderr
    assert "storage driver fuse is unavailable" in r.stderr
    assert "/nonexistent/libfuse3.so.3" in r.stderr
    assert not os.listdir(store / "tmp")


@pytest.mark.requires_fuse
def test_a_refused_driver_leaves_no_container_and_no_name(cli, store: Path):
    env = {"SANDBOX_STORAGE_DRIVER": "fuse", **NO_LIBFUSE}
    r = cli("run", "--rm", "--name", "refused", "busybox", "true", env=env)
    assert r.returncode == 125
    assert not os.listdir(store / "containers")
    again = cli("run", "--rm", "--name", "refused", "busybox", "true")
    assert again.returncode == 0, again.stderr


def test_the_host_image_stays_on_kernel_overlay_and_says_when_it_cannot(cli, store: Path):
    """The host image stacks the host's own directories: kernel overlay only. Where the
    kernel refuses overlay in a user namespace, one clear line; a forced fuse driver still
    gets overlay for it."""
    r = cli("run", "--rm", "--name", "hosted", "host", "true")
    assert r.returncode == 125
    assert r.stderr.count("\n") == 1, r.stderr
    assert "the built-in host image needs kernel overlayfs" in r.stderr
    assert NO_OVERLAY in r.stderr
    assert not os.listdir(store / "containers")
    cache = store / "driver-probe.json"
    data = json.loads(cache.read_text())
    data["probes"]["overlay"] = "ok"
    cache.write_text(json.dumps(data))
    r = cli("run", "--rm", "--name", "hosted", "--storage-driver", "fuse", "host", "sh", "-c",
            "grep -c ' overlay ' /proc/mounts")
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) > 0


def test_a_run_on_kernel_overlay_does_not_probe_fuse(cli, store: Path):
    cache = store / "driver-probe.json"
    cache.write_text(json.dumps({"kernel": os.uname().release, "probes": {"overlay": "ok"}}))
    r = cli("run", "--rm", "busybox", "true", env=NO_LIBFUSE)  # a probe would now fail
    assert r.returncode == 0, r.stderr
    assert json.loads(cache.read_text())["probes"] == {"overlay": "ok"}
    info = _info(cli, NO_LIBFUSE)  # info shows every probe: FUSE is probed for it
    assert info["name"] == "overlay"
    assert "/nonexistent/libfuse3.so.3" in info["probes"]["fuse"]


def test_the_fuse_fingerprint_names_the_interpreter_not_its_spelling(monkeypatch, tmp_path):
    """``python`` and ``python3`` of one venv are one interpreter: alternating them (the
    console script's ``python3`` and ``python -m sandbox``) must not re-probe every run."""
    from sandbox import drivers

    real = tmp_path / "python3.11"
    real.write_text("")
    (tmp_path / "python3").symlink_to(real)
    (tmp_path / "python").symlink_to("python3")
    prints = []
    for name in ("python", "python3"):
        monkeypatch.setattr("sys.executable", str(tmp_path / name))
        prints.append(drivers._fuse_fingerprint())
    assert prints[0] == prints[1]
    monkeypatch.setattr("sys.executable", str(real.with_name("python3.12")))
    assert drivers._fuse_fingerprint() != prints[0]
