"""Capability probes and the harness runner shared by the fuse_overlay tests."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
HARNESS = HERE / "fo_harness.py"


@functools.cache
def userns_reason() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    proc = subprocess.run(["unshare", "-Urm", "true"], capture_output=True, text=True)
    if proc.returncode:
        return f"unprivileged user namespaces unavailable: {proc.stderr.strip()}"
    return None


@functools.cache
def fuse_reason() -> str | None:
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not usable by this user"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed"
    reason = userns_reason()
    if reason:
        return reason
    with tempfile.TemporaryDirectory(prefix="fo-probe-") as tmp:
        answer = run_harness({"root": tmp, "mode": "scenarios", "kinds": ["fuse"],
                              "names": ["open-plain"]}, check=False)
    result = (answer or {}).get("fuse", {}).get("open-plain")
    if not isinstance(result, list):
        return f"cannot mount fuse_overlay in a user namespace: {result}"
    return None


@functools.cache
def kernel_overlay_reason() -> str | None:
    reason = userns_reason()
    if reason:
        return reason
    with tempfile.TemporaryDirectory(prefix="fo-probe-") as tmp:
        answer = run_harness({"root": tmp, "mode": "scenarios", "kinds": ["kernel"],
                              "names": ["open-plain"]}, check=False)
    result = (answer or {}).get("kernel", {}).get("open-plain")
    if not isinstance(result, list):
        return f"kernel overlayfs cannot be mounted in a user namespace: {result}"
    return None


@functools.cache
def fuse_overlayfs_reason() -> str | None:
    if shutil.which("fuse-overlayfs") is None:
        return "fuse-overlayfs (the reference implementation) is not installed"
    return fuse_reason()


def run_harness(request: dict[str, Any], *, check: bool = True, timeout: float = 600) -> Any:
    """Run fo_harness.py in a fresh user+mount namespace; its JSON answer."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run(
        ["unshare", "-Urm", sys.executable, str(HARNESS)],
        input=json.dumps(request), capture_output=True, text=True, timeout=timeout, env=env,
    )
    if proc.returncode:
        if check:
            raise AssertionError(f"harness failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        return None
    return json.loads(proc.stdout)
