"""Finding processes by command line: what a test checks to prove nothing was left running."""

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
