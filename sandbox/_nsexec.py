"""Entering a container: ``exec`` and the file operations that must happen inside its root.

``python -m sandbox._nsexec REQUEST_JSON`` is the helper threaded callers spawn (DESIGN
decision 1: only a single-threaded process may ``setns`` into a user namespace); the CLI, which
is single-threaded, calls ``run_request`` in its own process instead (one interpreter less).

Joining a running container: open ``/proc/INIT/ns/*`` first, then ``setns`` the user namespace
(so the others are ours to join), ipc, uts, net, cgroup, pid, mnt; ``setns`` of a mount
namespace makes its root (the container's, after its ``pivot_root``) our root and cwd. The
command is forked (a ``setns`` into a PID namespace applies to children) and gets the
container's user, capability bounds, ``no_new_privs``, environment and working directory
through the same code as the container's own command (``sandbox.runtime.init``).

File operations (``cp``, ``export``) run chrooted in the container's root: symlinks inside the
container resolve inside it and can never reach the host (the CVE-2018-15664 class). For a
container that is not running, its root filesystem is mounted in a fresh user+mount namespace.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any, NoReturn

from sandbox._record import replace as record_replace
from sandbox.runtime.process import relay_pty  # before setns: the host's files go away

__all__ = ["run_request", "join_container", "main", "NS_ORDER"]

NS_ORDER = ("user", "ipc", "uts", "net", "cgroup", "pid", "mnt")
_NS_FLAGS = {"user": 0x10000000, "ipc": 0x08000000, "uts": 0x04000000, "net": 0x40000000,
             "cgroup": 0x02000000, "pid": 0x20000000, "mnt": 0x00020000}


class NsExecError(Exception):
    def __init__(self, message: str, code: int = 125) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def _proc_start(pid: int) -> int:
    from sandbox._cstate import proc_start_time

    return proc_start_time(pid)


def _same_namespace(fd: int, ns: str) -> bool:
    """Whether we are in that namespace already (``--network host``: the host's network
    namespace, which only root may ``setns`` into, as nsenter skips it too)."""
    try:
        theirs, ours = os.fstat(fd), os.stat(f"/proc/self/ns/{ns}")
    except OSError:
        return False
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def join_container(init_pid: int, init_start: int) -> None:
    """Enter every namespace and the root of the container whose PID 1 is ``init_pid``."""
    from sandbox import _syscalls as sc

    fds: dict[str, int] = {}
    try:
        for ns in NS_ORDER:
            try:
                fds[ns] = os.open(f"/proc/{init_pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                if ns == "cgroup":
                    continue
                raise
    except OSError as exc:
        for fd in fds.values():
            os.close(fd)
        raise NsExecError(f"the container is not running (pid {init_pid}: "
                          f"{exc.strerror})") from None
    try:
        if init_start and _proc_start(init_pid) != init_start:
            raise NsExecError("the container is not running (its init has exited)")
        for ns in NS_ORDER:
            if ns in fds and not _same_namespace(fds[ns], ns):
                sc.setns(fds[ns], _NS_FLAGS[ns])
        # setns(mnt) made the namespace's root (the container's, after its pivot_root) our
        # root and cwd; no need to open /proc/INIT/root, which a FUSE rootfs refuses to us
        os.chdir("/")
    except OSError as exc:
        raise NsExecError(f"cannot join the container: {exc.strerror}") from None
    finally:
        for fd in fds.values():
            os.close(fd)


# -- exec -------------------------------------------------------------------------------------

def _exec_spec(req: dict[str, Any]) -> Any:
    from sandbox.spec import spec_from_json

    spec = spec_from_json(json.dumps(req["spec"]))
    env: dict[str, str] = {}
    for item in [*spec.env, *req.get("env", [])]:
        k, _, v = item.partition("=")
        env[k] = v
    return record_replace(
        spec, argv=tuple(req["argv"]), env=tuple(f"{k}={v}" for k, v in env.items()),
        workdir=req.get("workdir") or spec.workdir or "/",
        user=req["user"] if req.get("user") is not None else spec.user,
        interactive=bool(req.get("interactive")), tty=bool(req.get("tty")))


def _exec(req: dict[str, Any]) -> int:
    from sandbox.runtime import init

    spec = _exec_spec(req)
    join_container(int(req["init_pid"]), int(req.get("init_start") or 0))
    master = slave = -1
    pty = ""
    if spec.tty:
        master, slave = os.openpty()
        pty = init.pty_path(master)
    try:
        pid = init.spawn_command(spec, pty)  # this helper becomes the command's user too
    except init.SetupFailed as exc:
        sys.stderr.write(f"sandbox: {exc.message}\n")
        if master >= 0:
            os.close(master)
        return 0 if req.get("detach") else exc.code
    finally:
        if slave >= 0:
            os.close(slave)
    if req.get("detach"):
        return 0
    return _wait_child(pid, master, bool(req.get("kill_on_term")), bool(req.get("tty_proxy")))


def _wait_child(pid: int, master: int, kill_on_term: bool, proxy: bool) -> int:
    from sandbox.runtime.init import FORWARDED_SIGNALS

    def forward(signum: int, _frame: object) -> None:
        try:
            if kill_on_term and signum == signal.SIGTERM:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in FORWARDED_SIGNALS:
        if sig != signal.SIGWINCH or master < 0:
            signal.signal(sig, forward)
    if master >= 0:
        if proxy:
            from sandbox.runtime.process import _proxy_pty

            _proxy_pty(master)
        else:
            relay_pty(master)
        os.close(master)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
        except ChildProcessError:
            return 125
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


# -- file operations in the container's root -------------------------------------------------

def _mount_stopped(spec: Any) -> str:
    """In a fresh user+mount namespace: mount the container's root filesystem; chroot into it."""
    from sandbox import _syscalls as sc
    from sandbox._paths import resolve_in_root
    from sandbox.runtime.init import execute_plan
    from sandbox.runtime.plan import rootfs_ops

    rootfs = spec.rootfs
    if rootfs.driver == "fuse":
        rootfs = record_replace(rootfs, driver="overlay")
    sc.mount(None, "/", None, sc.MS_PRIVATE | sc.MS_REC)
    execute_plan(rootfs_ops(rootfs), rootfs.mountpoint)
    for m in spec.mounts:
        if m.type != "bind":
            continue
        target = resolve_in_root(rootfs.mountpoint, m.target)
        if os.path.isdir(m.source):
            os.makedirs(target, exist_ok=True)
        elif not os.path.exists(target):
            continue
        sc.mount(m.source, target, None, sc.MS_BIND | sc.MS_REC)
    os.chdir(rootfs.mountpoint)
    os.chroot(".")
    return "/"


def _file_op_inside(req: dict[str, Any]) -> int:
    from sandbox import _cp

    return _cp.container_side(req)


def _stopped_op(req: dict[str, Any]) -> int:
    from sandbox.spec import spec_from_json

    _mount_stopped(spec_from_json(json.dumps(req["spec"])))
    return _file_op_inside(req)


def run_request(req: dict[str, Any]) -> int:
    """Execute one request in this (single-threaded) process; returns the exit status."""
    try:
        if req["op"] == "exec":
            return _exec(req)
        from sandbox import _cp  # noqa: F401 - imported before the chroot hides our code
        from sandbox.runtime import init, plan  # noqa: F401

        if req.get("running"):
            join_container(int(req["init_pid"]), int(req.get("init_start") or 0))
            return _file_op_inside(req)
        from sandbox.runtime.idmap import detect_mapping
        from sandbox.runtime.userns import run_in_userns

        mapping = detect_mapping(force_single=req.get("map_mode") == "single")
        return run_in_userns(_stopped_op, req, mapping=mapping)
    except NsExecError as exc:
        sys.stderr.write(f"sandbox: {exc.message}\n")
        return exc.code
    except OSError as exc:
        sys.stderr.write(f"sandbox: {exc.strerror or exc}\n")
        return 125


def main() -> NoReturn:
    req = json.loads(sys.argv[1])
    code = run_request(req)
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
