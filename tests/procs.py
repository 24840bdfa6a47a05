"""Finding processes by command line (what a test checks to prove nothing was left running),
and running a function in a forked child."""

from __future__ import annotations

import os
from collections.abc import Callable


def pids_whose_cmdline(match: Callable[[bytes], bool]) -> list[int]:
    """The processes whose ``/proc/PID/cmdline`` (NUL-separated argv) satisfies ``match``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if match(f.read()):
                    found.append(int(pid))
        except OSError:
            continue
    return found


def processes_with(text: str) -> list[int]:
    """The processes whose command line contains ``text``."""
    return pids_whose_cmdline(lambda cmd: text.encode() in cmd)


def in_child(func: Callable[[], str]) -> str:
    """Run ``func`` in a forked child (whose namespaces it may change) and return what it
    returned; a failure in the child fails the test with its message."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            out = func()
            code = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            out = f"{type(exc).__name__}: {exc}"
        try:
            os.write(w, out.encode())
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    return out
