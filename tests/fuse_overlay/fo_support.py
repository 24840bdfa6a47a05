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


# root mapped to the caller, uids and gids 1..65536 to its /etc/subuid and /etc/subgid ranges
MULTI_UID = ["--map-root-user", "--map-users=auto", "--map-groups=auto", "-m"]


def run_harness(
    request: dict[str, Any], *, check: bool = True, timeout: float = 600,
    env: dict[str, str] | None = None, unshare: list[str] | None = None,
) -> Any:
    """Run fo_harness.py in a fresh user+mount namespace (``unshare -Urm`` unless *unshare*
    gives other flags; *env* added); its JSON answer."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", **(env or {}))
    proc = subprocess.run(
        ["unshare", *(unshare or ["-Urm"]), sys.executable, str(HARNESS)],
        input=json.dumps(request), capture_output=True, text=True, timeout=timeout, env=env,
    )
    if proc.returncode:
        if check:
            raise AssertionError(f"harness failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        return None
    return json.loads(proc.stdout)


def binding_reason(binding: str) -> str | None:
    """Why fuse_overlay cannot load *binding* (FUSE_OVERLAY_BINDING), or None."""
    proc = subprocess.run(
        [sys.executable, "-c", "import fuse_overlay._fuse as f; print(f.BINDING)"],
        capture_output=True, text=True, env=dict(os.environ, FUSE_OVERLAY_BINDING=binding),
    )
    if proc.returncode or proc.stdout.strip() != binding:
        last = (proc.stderr.strip().splitlines() or [proc.stdout.strip()])[-1]
        return f"{binding} is not importable here: {last}"
    return None


@functools.cache
def multi_uid_reason() -> str | None:
    """Why a user namespace with more than one uid cannot be made here, or None."""
    reason = userns_reason()
    if reason:
        return reason
    proc = subprocess.run(["unshare", *MULTI_UID, "cat", "/proc/self/uid_map"],
                          capture_output=True, text=True)
    if proc.returncode or len(proc.stdout.splitlines()) < 2:
        return f"no subordinate uid range for this user: {proc.stderr.strip()}"
    return None
