"""Storage drivers: each gives the same container filesystem; none leaves anything behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from procs import processes_with

pytestmark = pytest.mark.requires_userns

DRIVERS = ["overlay", pytest.param("fuse", marks=pytest.mark.requires_fuse), "copy"]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _mounts_mentioning(text: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if text in line]


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
def test_fuse_driver_mounts_fuse_overlay_as_root(cli, busybox_image):
    r = cli("run", "--rm", "--storage-driver", "fuse", busybox_image, "sh", "-c",
            "grep ' / ' /proc/mounts; ps -o args")
    assert "fuse" in r.stdout.split("\n")[0]
    assert "fuse_overlay" not in r.stdout.split("\n", 1)[1], "the FUSE server is visible"


@pytest.mark.requires_fuse
def test_fuse_driver_leaves_nothing_after_sigkill_of_the_engine(cli, busybox_image,
                                                               session_store: Path):
    naptime = str(600 + os.getpid() % 1000)  # a command line no other test runs
    proc = cli.popen("run", "--rm", "--storage-driver", "fuse", busybox_image, "sh", "-c",
                     f"echo ready; sleep {naptime}", stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    containers = session_store / "containers"
    running = [c for c in os.listdir(containers)]
    assert running
    assert processes_with("fuse_overlay")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    proc.stderr.close()  # type: ignore[union-attr]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        leftovers = [p for p in processes_with("fuse_overlay")
                     if any(c in _cmdline(p) for c in running)]
        if not leftovers and not processes_with(f"sleep\x00{naptime}"):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"left running after SIGKILL: {leftovers}")
    assert not _mounts_mentioning(str(containers))


def test_driver_choice_is_probed_and_explained(cli):
    import json

    info = json.loads(cli("info", "--format", "json").stdout)
    driver = info["storage_driver"]
    assert driver["probes"]["overlay"] in ("ok",) or driver["name"] != "overlay"
    assert driver["reason"]
