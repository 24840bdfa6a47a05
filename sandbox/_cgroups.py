"""cgroup v2 for containers, where the user has a delegated subtree (systemd ``Delegate=yes``).

Rootless engines can only use cgroups the user owns. On a cgroup v2 host where systemd
delegates ``user@UID.service`` to the user, each container gets ``<delegated>/sandbox/<id>``:

- ``--memory`` → ``memory.max`` (and ``memory.swap.max`` the same: Docker's default swap limit
  is twice the memory), ``--cpus`` → ``cpu.max`` (quota per 100 ms), ``--pids-limit`` →
  ``pids.max``;
- the container's first process is moved in before it unshares its cgroup namespace, so
  everything in the container is inside, and its ``/sys/fs/cgroup`` view starts there;
- ``pause`` freezes it (``cgroup.freeze``), ``stats`` reads it, and it is removed with the run.

Elsewhere (cgroup v1 or hybrid hosts, no delegation) there is no cgroup: ``reason()`` says why,
and ``run`` warns for each limit it cannot enforce.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Mapping

__all__ = ["Delegation", "find_delegation", "reason", "create", "enter", "remove", "freeze",
           "read_stats", "limit_files", "LIMIT_CONTROLLERS", "for_container"]

ROOT = "/sys/fs/cgroup"
PROC_SELF = "/proc/self/cgroup"
_PERIOD = 100_000  # cpu.max period, µs: Docker's default CFS period
LIMIT_CONTROLLERS = {"memory": "memory", "nano_cpus": "cpu", "pids_limit": "pids"}


class Delegation:
    """A cgroup v2 directory this user may manage, and the controllers its children get."""

    __slots__ = ("base", "controllers")

    def __init__(self, base: str, controllers: frozenset[str]) -> None:
        self.base = base
        self.controllers = controllers


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _own_path(proc_cgroup: str) -> str | None:
    """The unified-hierarchy path from /proc/PID/cgroup (``0::/a/b``)."""
    try:
        text = _read(proc_cgroup)
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def _find(root: str, proc_cgroup: str, uid: int) -> Delegation | str:
    if not os.path.exists(os.path.join(root, "cgroup.controllers")):
        if os.path.exists(os.path.join(root, "unified", "cgroup.controllers")):
            return "this host runs cgroups v1 (hybrid mode), which cannot be delegated to an " \
                   "unprivileged user"
        return "cgroups v1 cannot be delegated to an unprivileged user"
    rel = _own_path(proc_cgroup)
    if rel is None:
        return "this process is not in a cgroup v2 hierarchy"
    cur = os.path.normpath(root + "/" + rel.lstrip("/"))
    best = ""
    while len(cur) > len(root):  # the highest ancestor that is ours: systemd's user@UID.service
        try:
            mine = os.stat(cur).st_uid == uid
        except OSError:
            mine = False
        if mine and all(os.access(os.path.join(cur, f), os.W_OK)
                        for f in ("cgroup.procs", "cgroup.subtree_control")):
            best = cur
        cur = os.path.dirname(cur)
    if not best:
        return "no cgroup v2 subtree is delegated to this user (systemd Delegate=yes)"
    try:
        controllers = frozenset(_read(os.path.join(best, "cgroup.subtree_control")).split())
    except OSError as exc:
        return f"cannot read the delegated cgroup {best}: {exc.strerror}"
    return Delegation(best, controllers)


_cache: dict[tuple[str, str, int], Delegation | str] = {}


def find_delegation(root: str | None = None, proc_cgroup: str | None = None,
                    uid: int | None = None) -> Delegation | None:
    """The user's delegated cgroup v2 subtree, or None (``reason()`` says why)."""
    found = _lookup(root, proc_cgroup, uid)
    return found if isinstance(found, Delegation) else None


def reason(root: str | None = None, proc_cgroup: str | None = None, uid: int | None = None,
           controller: str = "") -> str:
    """Why a limit needing ``controller`` cannot be enforced here ('' when it can)."""
    found = _lookup(root, proc_cgroup, uid)
    if isinstance(found, str):
        return found
    if controller and controller not in found.controllers:
        return f"the {controller} controller is not delegated to this user " \
               f"(enabled: {' '.join(sorted(found.controllers)) or 'none'})"
    return ""


def _lookup(root: str | None, proc_cgroup: str | None, uid: int | None) -> Delegation | str:
    key = (root or ROOT, proc_cgroup or PROC_SELF, os.getuid() if uid is None else uid)
    if key not in _cache:
        _cache[key] = _find(*key)
    return _cache[key]


def limit_files(limits: Mapping[str, int]) -> dict[str, str]:
    """``{memory, nano_cpus, pids_limit}`` (0 = none) → the cgroup files and their contents."""
    out: dict[str, str] = {}
    if limits.get("memory"):
        out["memory.max"] = str(int(limits["memory"]))
        out["memory.swap.max"] = str(int(limits["memory"]))
    if limits.get("nano_cpus"):
        quota = max(1000, int(limits["nano_cpus"]) * _PERIOD // 1_000_000_000)
        out["cpu.max"] = f"{quota} {_PERIOD}"
    if limits.get("pids_limit"):
        out["pids.max"] = str(int(limits["pids_limit"]))
    return out


def create(deleg: Delegation, cid: str, limits: Mapping[str, int]) -> str:
    """``<delegated>/sandbox/<cid>`` with the limits written; returns its path."""
    parent = os.path.join(deleg.base, "sandbox")
    try:
        os.mkdir(parent, 0o755)
    except FileExistsError:
        pass
    wanted = [c for c in ("cpu", "memory", "pids") if c in deleg.controllers]
    if wanted:
        enabled = set(_read(os.path.join(parent, "cgroup.subtree_control")).split())
        missing = [c for c in wanted if c not in enabled]
        if missing:
            _write(os.path.join(parent, "cgroup.subtree_control"),
                   " ".join("+" + c for c in missing))
    path = os.path.join(parent, cid)
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass  # a restart of the same container
    try:
        for name, value in limit_files(limits).items():
            target = os.path.join(path, name)
            if name == "memory.swap.max" and not os.path.exists(target):
                continue  # no swap accounting on this kernel
            _write(target, value)
    except OSError:
        remove(path)
        raise
    return path


def enter(path: str, pid: int) -> None:
    """Move ``pid`` (and, from then on, everything it forks) into the cgroup."""
    _write(os.path.join(path, "cgroup.procs"), str(pid))


def remove(path: str, timeout: float = 2.0) -> None:
    """Remove the container's cgroup once its last process has gone (kills stragglers)."""
    if not path:
        return
    deadline = time.monotonic() + timeout
    killed = False
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                return
        if not killed and os.path.exists(os.path.join(path, "cgroup.kill")):
            try:
                _write(os.path.join(path, "cgroup.kill"), "1")
            except OSError:
                pass
            killed = True
        time.sleep(0.01)


def freeze(path: str, frozen: bool, timeout: float = 5.0) -> bool:
    """Freeze or thaw the whole cgroup; False where there is no freezer (then use signals)."""
    ctl = os.path.join(path, "cgroup.freeze") if path else ""
    if not ctl or not os.path.exists(ctl):
        return False
    _write(ctl, "1" if frozen else "0")
    want = f"frozen {int(frozen)}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if want in _read(os.path.join(path, "cgroup.events")).splitlines():
                break
        except OSError:
            break
        time.sleep(0.005)
    return True


def read_stats(path: str) -> dict[str, int] | None:
    """``memory`` (bytes), ``memory_limit`` (0 = none), ``pids`` and ``cpu_usec`` of the
    cgroup, or None without one."""
    if not path or not os.path.isdir(path):
        return None
    out: dict[str, int] = {}
    for key, name in (("memory", "memory.current"), ("pids", "pids.current")):
        try:
            out[key] = int(_read(os.path.join(path, name)))
        except (OSError, ValueError):
            pass
    try:
        limit = _read(os.path.join(path, "memory.max")).strip()
        out["memory_limit"] = 0 if limit == "max" else int(limit)
    except (OSError, ValueError):
        pass
    try:
        for line in _read(os.path.join(path, "cpu.stat")).splitlines():
            k, _, v = line.partition(" ")
            if k == "usage_usec":
                out["cpu_usec"] = int(v)
    except (OSError, ValueError):
        pass
    return out


def for_container(cid: str, hostconfig: Mapping[str, object]) -> str:
    """The container's cgroup with its limits where a subtree is delegated, else ''."""
    deleg = find_delegation()
    if deleg is None:
        return ""
    limits = {k: int(hostconfig.get(k) or 0) for k in LIMIT_CONTROLLERS}  # type: ignore[call-overload]
    try:
        return create(deleg, cid, limits)
    except OSError as exc:
        from sandbox.errors import SandboxError

        raise SandboxError(f"cannot set up the container's cgroup under {deleg.base}: "
                           f"{exc.strerror}") from None
