"""Ctrl-C, a SIGKILL of pytest, and a SIGKILL of pytest and its reaper leave nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.requires_userns, pytest.mark.requires_lifecycle]

HANGING = '''
import os, time, pytest

@pytest.mark.container(command=["sleep", "1000"])
def test_hangs(container, tmp_path):
    open(os.environ["READY_FILE"], "w").close()
    time.sleep(1000)
'''

HANGING_ISOLATED = '''
import os, time, pytest

@pytest.mark.container(isolate=True)
def test_hangs(tmp_path):
    open(os.environ["READY_FILE"], "w").write(str(os.getpid()))
    time.sleep(1000)
'''


def _start(pytester: pytest.Pytester, store_root: Path, source: str) -> tuple[
        subprocess.Popen[bytes], Path]:
    pytester.makepyfile(test_hang=source)
    basetemp = pytester.path / "basetemp"
    ready = basetemp / "ready"   # the basetemp is writable from an isolated test body
    env = {**os.environ, "READY_FILE": str(ready), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTEST_XDIST_WORKER", None)
    log = pytester.path / "inner.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                                 f"--sandbox-root={store_root}", f"--basetemp={basetemp}", "-q",
                                 "-s"], cwd=pytester.path, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the inner test never started"
        time.sleep(0.05)
    return proc, log


def _wait_empty(left, timeout: float = 20) -> list[str]:
    deadline = time.monotonic() + timeout
    while left() and time.monotonic() < deadline:
        time.sleep(0.1)
    return left()


def _reapers(store_root: Path) -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"pytest_plugin._reaper" in cmd and str(store_root).encode() in cmd:
            pids.append(int(pid))
    return pids


def _zygotes_of(parent: int) -> list[int]:
    """The session's zygote (``sandbox._zygote``): a child of the pytest process."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"sandbox._zygote" in cmd:
            pids.append(int(pid))
    return pids


def _living(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != b"Z":
            out.append(pid)
    return out


def test_ctrl_c_leaves_nothing(pytester, store_root, containers_left) -> None:
    proc, log = _start(pytester, store_root, HANGING)
    assert len(containers_left()) == 1
    zygotes = _zygotes_of(proc.pid)
    assert len(zygotes) == 1
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert "KeyboardInterrupt" in log.read_text()
    assert containers_left() == []
    assert _wait_empty(lambda: _reapers(store_root), 10) == []
    assert _living(zygotes) == []


def test_ctrl_c_during_isolated_test(pytester, store_root, containers_left) -> None:
    proc, log = _start(pytester, store_root, HANGING_ISOLATED)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert "KeyboardInterrupt" in log.read_text()
    assert containers_left() == []


def test_sigkill_of_pytest_reaped_at_once(pytester, store_root, containers_left) -> None:
    proc, _ = _start(pytester, store_root, HANGING)
    assert len(containers_left()) == 1
    zygotes = _zygotes_of(proc.pid)
    proc.kill()
    proc.wait()
    assert _wait_empty(containers_left) == []
    assert _wait_empty(lambda: _living(zygotes), 10) == []  # its parent-death signal


def test_sigkill_of_everything_cleaned_by_next_run(pytester, store_root, containers_left,
                                                   run_inner) -> None:
    proc, _ = _start(pytester, store_root, HANGING)
    for pid in _reapers(store_root):
        os.kill(pid, signal.SIGKILL)
    proc.kill()
    proc.wait()
    time.sleep(0.5)
    assert len(containers_left()) == 1       # nobody was left to clean it
    pytester.makepyfile(test_hang="def test_next(container):\n    pass\n")
    run_inner("-q").assert_outcomes(passed=1)
    assert containers_left() == []


def test_sigkill_during_isolated_test(pytester, store_root, containers_left) -> None:
    proc, ready = _start(pytester, store_root, HANGING_ISOLATED)
    proc.kill()
    proc.wait()
    # the container's holder gets its parent-death signal and takes the test body down
    assert _wait_empty(containers_left) == []
