"""Run a function inside a user namespace with the container maps (``podman unshare``).

Layers are unpacked and container layers removed in a user namespace with the same maps the
containers get, so that ``chown`` gives the image's real owners and files owned by the
subordinate range can be deleted. Single-threaded callers fork; others spawn a fresh interpreter
(``python -m sandbox.runtime.userns``), the call pickled on stdin (DESIGN decision 1).
"""

from __future__ import annotations

import os
import pickle
import sys
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

from sandbox import _syscalls as sc
from sandbox.errors import SandboxError, UserNamespaceUnavailable
from sandbox.runtime.idmap import IdMapping, detect_mapping, write_maps

__all__ = ["run_in_userns", "chown_tree"]

T = TypeVar("T")


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _child(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
           ready_r: int, go_r: int, out_w: int, ready_w: int, join_pid: int) -> None:
    try:
        _child_call(func, args, kwargs, go_r, out_w, ready_w, join_pid)
    finally:
        os._exit(1)  # a forked copy of the caller: never return into its code


def _join(pid: int) -> None:
    """Enter the user and mount namespaces of ``pid`` (a container's first process, whose
    mount namespace holds a writable layer in memory)."""
    try:
        fds = [os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
               for ns in ("user", "mnt")]
    except OSError as exc:
        raise SandboxError(f"the container is not running (pid {pid}: {exc.strerror})") from None
    try:
        sc.setns(fds[0], sc.CLONE_NEWUSER)
        sc.setns(fds[1], sc.CLONE_NEWNS)
    finally:
        for fd in fds:
            os.close(fd)


def _child_call(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                go_r: int, out_w: int, ready_w: int, join_pid: int) -> None:
    code = 0
    try:
        if join_pid:
            _join(join_pid)
            os.write(ready_w, b"J")
        else:
            try:
                sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNS)
            except OSError as exc:
                from sandbox.runtime.init import userns_failure_message

                raise UserNamespaceUnavailable(userns_failure_message(exc.errno or 0)) from None
            os.write(ready_w, b"U")
            if os.read(go_r, 1) != b"M":
                raise UserNamespaceUnavailable("the uid/gid maps could not be written")
        result: tuple[str, Any] = ("ok", func(*args, **kwargs))
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the caller
        result = ("err", exc)
        code = 1
    try:
        payload = pickle.dumps(result)
    except Exception:  # noqa: BLE001 - an unpicklable exception
        payload = pickle.dumps(("err", SandboxError(str(result[1]))))
    try:
        os.write(out_w, payload)
    except OSError:
        pass  # the caller gave up on us (its maps failed)
    os._exit(code)


def run_in_userns(func: Callable[..., T], *args: Any, mapping: IdMapping | None = None,
                  join_pid: int = 0, **kwargs: Any) -> T:
    """Call ``func(*args, **kwargs)`` as root of a fresh user namespace (or, with ``join_pid``,
    in the user and mount namespaces of that process); return its result or re-raise its
    exception here. ``func`` and its arguments must be picklable when the caller has
    threads."""
    mapping = mapping or detect_mapping()
    from sandbox.runtime.process import has_threads

    if has_threads():
        return _spawned(func, args, kwargs, mapping, join_pid)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        for fd in (ready_r, go_w, out_r):
            os.close(fd)
        _child(func, args, kwargs, ready_r, go_r, out_w, ready_w, join_pid)
    for fd in (ready_w, go_r, out_w):
        os.close(fd)
    try:
        if os.read(ready_r, 1) == b"U":
            write_maps(pid, mapping.mode, mapping.uid_map, mapping.gid_map, mapping.newuidmap,
                       mapping.newgidmap)
            os.write(go_w, b"M")
        os.close(go_w)
        go_w = -1
        payload = _read_all(out_r)
    finally:
        for fd in (ready_r, out_r, go_w):
            if fd >= 0:
                os.close(fd)
        os.waitpid(pid, 0)
    result: T = _unpack(payload)
    return result


def _unpack(payload: bytes) -> Any:
    if not payload:
        raise SandboxError("the user-namespace helper died without a result")
    status, value = pickle.loads(payload)
    if status == "err":
        raise value
    return value


def _spawned(func: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any],
             mapping: IdMapping, join_pid: int) -> T:
    import subprocess

    data = pickle.dumps((func, args, kwargs, mapping.mode, join_pid))
    proc = subprocess.run([sys.executable, "-m", "sandbox.runtime.userns"], input=data,
                          capture_output=True, check=False)
    if not proc.stdout:
        raise SandboxError("the user-namespace helper failed: "
                           + (proc.stderr.decode(errors="replace").strip().splitlines()
                              or ["no output"])[-1])
    return _unpack(proc.stdout)  # type: ignore[no-any-return]


def chown_tree(path: str, uid: int, gid: int) -> None:
    """``chown -hR uid:gid path`` (meant to run inside the user namespace)."""
    os.lchown(path, uid, gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames]:
            os.lchown(os.path.join(dirpath, name), uid, gid)


def main() -> None:
    func, args, kwargs, mode, join_pid = pickle.loads(sys.stdin.buffer.read())
    mapping = detect_mapping(force_single=mode == "single")
    try:
        value = ("ok", run_in_userns(func, *args, mapping=mapping, join_pid=join_pid, **kwargs))
    except BaseException as exc:  # noqa: BLE001
        value = ("err", exc)
    try:
        out = pickle.dumps(value)
    except Exception:  # noqa: BLE001
        out = pickle.dumps(("err", SandboxError(str(value[1]))))
    sys.stdout.buffer.write(out)


if __name__ == "__main__":
    main()
