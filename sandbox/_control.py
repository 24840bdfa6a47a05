"""Process-level mechanisms of the lifecycle: signalling a container, waiting for processes
by (pid, start time), killing leftovers, unmounting a leftover FUSE rootfs."""

from __future__ import annotations

import os
import time

from sandbox import _cstate as cs
from sandbox import _json as json
from sandbox import _sig as _signal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    from sandbox.containers import Engine

    T = TypeVar("T")

__all__ = ["kill_leftovers", "prune_exit_files", "send", "wait_pid_exit", "exit_file_code",
           "signal_all", "unmount_rootfs", "drop_volumes", "remove_container_dir",
           "writable_layer", "in_layer_userns"]


def writable_layer(cdir: str, rootfs: dict[str, Any]) -> tuple[str, int] | None:
    """(where this process reads a container's writable layer, the pid in whose user and
    mount namespaces it lives, or 0): its ``upper`` directory; for a layer in memory
    (``RootfsSpec.scratch``) that layer in the mount namespace of the container's first
    process, while the container runs. None: that layer is gone with its container."""
    if not rootfs.get("scratch"):
        return str(rootfs["upper"]), 0
    from sandbox.spec import RootfsSpec

    st = cs.read_state(cdir)
    cpid = int(st.get("cpid") or 0)
    if not cpid or not cs.alive(int(st.get("init_pid") or 0), int(st.get("init_start") or 0)):
        return None
    return RootfsSpec(**rootfs).upper_seen_from_outside(cpid), cpid


def in_layer_userns(engine: Engine, layer: tuple[str, int], rootfs: dict[str, Any],
                    func: Callable[..., T], *args: Any) -> T:
    """``func(upper, *args)`` as root of a user namespace where the layer's files (of the
    subordinate range too) are the caller's: a fresh one for a layer on disk, that of the
    container's first process for a layer in memory."""
    from sandbox.runtime.userns import run_in_userns

    path, holder = layer
    if not holder:
        return run_in_userns(func, path, *args, mapping=engine.mapping)
    from sandbox.spec import RootfsSpec

    return run_in_userns(func, RootfsSpec(**rootfs).upper_dir, *args, mapping=engine.mapping,
                         join_pid=holder)


def kill_leftovers(st: dict[str, Any]) -> None:
    init_pid, init_start = int(st.get("init_pid") or 0), int(st.get("init_start") or 0)
    if cs.alive(init_pid, init_start):
        for pid in cs.container_processes(init_pid) or [init_pid]:
            try:
                os.kill(pid, _signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    cpid = int(st.get("cpid") or 0)
    if cpid and cs.proc_start_time(cpid) and cs.alive(init_pid, init_start):
        try:
            os.kill(cpid, _signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def prune_exit_files(engine: Engine, names: list[str] | None = None) -> None:
    """Remove ``--rm`` exit files older than ten minutes (``names``: the directory's listing,
    when the caller has it)."""
    d = engine.store.containers_dir()
    if names is None:
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return
    now = time.time()
    for n in names:
        if n.endswith(cs.EXIT_SUFFIX):
            p = os.path.join(d, n)
            try:
                if now - os.stat(p).st_mtime > 600:
                    os.unlink(p)
            except OSError:
                pass


def send(st: dict[str, Any], sig: int) -> None:
    init_pid, init_start = int(st.get("init_pid") or 0), int(st.get("init_start") or 0)
    main, main_start = int(st.get("pid") or 0), int(st.get("pid_start") or 0)
    target = init_pid if sig == _signal.SIGKILL or not cs.alive(main, main_start) else main
    if target == init_pid and not cs.alive(init_pid, init_start):
        return
    try:
        os.kill(target, sig)
    except ProcessLookupError:
        pass


def wait_pid_exit(pid: int, start: int, timeout: float) -> bool:
    """True once (pid, start) is gone; False on timeout."""
    import select

    if not cs.alive(pid, start):
        return True
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return True
    try:
        if not cs.alive(pid, start):
            return True
        ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
        return bool(ready) or not cs.alive(pid, start)
    finally:
        os.close(fd)


def exit_file_code(cdir: str) -> int:
    for _ in range(100):
        try:
            with open(cdir + cs.EXIT_SUFFIX) as f:
                return int(json.load(f).get("exit_code", 0))
        except (OSError, ValueError):
            time.sleep(0.01)
    return 0


def signal_all(st: dict[str, Any], sig: int) -> None:
    init_pid = int(st.get("init_pid") or 0)
    seen: set[int] = set()
    for _ in range(3):
        pids = [p for p in cs.container_processes(init_pid) if p not in seen]
        if not pids:
            break
        for p in pids:
            try:
                os.kill(p, sig)
            except (ProcessLookupError, PermissionError):
                pass
            seen.add(p)


def unmount_rootfs(cfg: dict[str, Any]) -> None:
    """A FUSE rootfs is the one mount visible on the host: lazily unmount a leftover."""
    import subprocess

    mnt = cfg.get("spec", {}).get("rootfs", {}).get("mountpoint", "")
    if mnt and os.path.ismount(mnt):
        import shutil

        tool = shutil.which("fusermount3") or shutil.which("fusermount")
        if tool:
            subprocess.run([tool, "-u", "-z", mnt], check=False, capture_output=True)


def drop_volumes(engine: Engine, hc: dict[str, Any], *, anonymous_only: bool) -> None:
    names = [v["name"] for v in hc.get("volumes", []) if v.get("anonymous") or not anonymous_only]
    if names:
        from sandbox import volumes

        volumes.remove_volumes(engine, names)


def _rm_in_userns(root: str, path: str) -> None:
    from sandbox.store import rm_rf

    rm_rf(path, under=root)


def remove_container_dir(engine: Engine, cid: str, name: str | None = None) -> None:
    """``Engine.remove_dir`` (``name``: the container's, when the caller knows it), and in the
    user namespace whatever it could not remove.

    Files of the subordinate range in a mode-0700 directory cannot be removed, nor chmodded, by
    the user outside: the store's chmod-and-retry then fails (even recursing without end), so
    the user namespace, where those uids are ours, finishes the job.
    """
    cdir = engine.store.container_dir(cid)
    try:
        engine.remove_dir(cid, name)
    except (OSError, RecursionError):
        pass
    if os.path.lexists(cdir):
        from sandbox.runtime.userns import run_in_userns

        run_in_userns(_rm_in_userns, engine.store.root, cdir, mapping=engine.mapping)
