"""Run a function inside a user namespace with the container maps (``podman unshare``).

Layers are unpacked and container layers removed in a user namespace with the same maps the
containers get, so that ``chown`` gives the image's real owners and files owned by the
subordinate range can be deleted. Single-threaded callers fork; others spawn a fresh interpreter
(``python -m sandbox.runtime.userns``), the call pickled on stdin (DESIGN decision 1).
"""

from __future__ import annotations

import os
import sys

# pickle is imported where it is used: ``sandbox run`` imports this module on its way to the
# container and never pickles
from sandbox import _sig as signal
from sandbox import _syscalls as sc
from sandbox.errors import SandboxError, UserNamespaceUnavailable
from sandbox.runtime.idmap import (
    IdMapping,
    MapError,
    detect_mapping,
    map_failure,
    map_tool_argvs,
    start_map_tool,
    wait_map_tools,
    write_maps,
)

__all__ = ["run_in_userns", "enter_user_namespace", "prepare_user_namespace", "advance_prepared",
           "cancel_prepared", "reap_maker", "chown_tree"]

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is an import of its own: not on the way to a container
    from collections.abc import Callable
    from typing import Any, TypeVar

    T = TypeVar("T")

_INSIDE: IdMapping | None = None  # the maps of the user namespace this process has entered
_MAKER: _Holder | None = None  # the namespace's holder, until reaped
_PREPARED: _Holder | None = None  # prepare_user_namespace's, until enter_user_namespace takes it


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


def _unavailable(exc: OSError) -> UserNamespaceUnavailable:
    """The one-line error for a user namespace the kernel would not make (why, from its
    settings: ``init.userns_failure_message``)."""
    from sandbox.runtime.init import userns_failure_message

    return UserNamespaceUnavailable(userns_failure_message(exc.errno or 0))


def _child_call(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                go_r: int, out_w: int, ready_w: int, join_pid: int) -> None:
    import pickle

    code = 0
    try:
        if join_pid:
            _join(join_pid)
            os.write(ready_w, b"J")
        else:
            try:
                sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNS)
            except OSError as exc:
                raise _unavailable(exc) from None
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


def enter_user_namespace(mapping: IdMapping) -> None:
    """Move this process into a new user namespace with the container's maps, or raise
    ``UserNamespaceUnavailable`` and stay where it is.

    Single-uid mode: unshare and write our own maps, as ``unshare -r`` does. Subuid mode: the
    map tools must act from outside the namespace, and we must stay outside should they fail
    (in a namespace without maps our own files are no longer ours: the container directory could
    not be removed). A child cloned into a new user namespace holds it (``clone_holder``: no
    fork of this process), we map it and join it, and kill the child; ``reap_maker`` collects
    it once the container is done. Single-uid mode takes that way too where AppArmor restricts
    unprivileged namespaces (own maps are refused there).

    Afterwards ``run_in_userns`` calls its function here: this process is root of a namespace
    with the same maps already (and a fork would put the child in the container's PID
    namespace).
    """
    global _INSIDE, _MAKER, _PREPARED
    if mapping.mode != "subuid" and not _apparmor_restricts():
        try:
            sc.unshare(sc.CLONE_NEWUSER)
        except OSError as exc:
            raise _unavailable(exc) from None
        try:
            write_maps(os.getpid(), mapping)
        except MapError as exc:  # not seen outside AppArmor's restriction, checked above
            raise map_failure(exc, subuid=False) from None
        _INSIDE = mapping
        return
    holder, _PREPARED = _PREPARED, None
    if holder is not None and (holder.mapping is not mapping or holder.gone()):
        holder.discard()
        holder = None
    if holder is None:
        try:
            holder = _Holder(mapping)
        except OSError as exc:
            raise _unavailable(exc) from None
    try:
        try:
            holder.finish()
        except MapError as exc:
            raise map_failure(exc, subuid=mapping.mode == "subuid") from None
        fd = os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        try:
            sc.setns(fd, sc.CLONE_NEWUSER)
        finally:
            os.close(fd)
    except BaseException:
        holder.discard()
        raise
    os.kill(holder.pid, signal.SIGKILL)  # its work is done; reap_maker collects it later
    _MAKER = holder
    _INSIDE = mapping


class _Holder:
    """A new user namespace, held by a cloned child (``sc.clone_holder``), and the map tools
    that map it (subuid mode), started one at a time by ``step``: each runs while this process
    works on, where two at once would compete with it for the CPU (on two cores, a millisecond
    of every ``sandbox run``)."""

    __slots__ = ("mapping", "pid", "stack", "pending", "started")

    # How long the holder may outlive us should we be killed before we kill it: it is a bare
    # libc sleep, with no parent-death signal. Far longer than any wait for the maps; a
    # prepared holder gone by the time it is needed is replaced (``gone``).
    SECONDS = 60

    def __init__(self, mapping: IdMapping) -> None:
        self.pid, self.stack = sc.clone_holder(sc.CLONE_NEWUSER, self.SECONDS)  # OSError
        self.mapping = mapping
        self.pending = map_tool_argvs(self.pid, mapping) if mapping.mode == "subuid" else []
        self.started: list[tuple[str, int]] = []

    def step(self) -> None:
        """Start the next map tool, if any (``OSError`` if it cannot be: it stays next)."""
        if self.pending:
            self.started.append(start_map_tool(self.pending[0]))
            del self.pending[0]

    def finish(self) -> None:
        """The maps written: the tools not started yet, then every tool waited for (our own
        maps in single-uid mode); ``MapError`` if they could not be."""
        if self.mapping.mode != "subuid":
            write_maps(self.pid, self.mapping)
            return
        try:
            while self.pending:
                self.step()
        except OSError as exc:
            raise MapError(exc.errno, f"{self.pending[0][0]}: {exc.strerror}") from None
        wait_map_tools(self.pid, self.started)

    def gone(self) -> bool:
        """Whether the holder has ended (its time ran out, or a signal ended it)."""
        return signal.exited(self.pid)

    def discard(self) -> None:
        """No process of it left: the tools reaped, the holder killed and reaped."""
        wait_map_tools(self.pid, self.started, check=False)
        signal.kill_and_reap(self.pid, signal.SIGKILL)


def prepare_user_namespace(mapping: IdMapping) -> None:
    """Start on the user namespace ``enter_user_namespace`` will enter with ``mapping``, where
    that takes the map tools (subuid ranges): clone the namespace's holder and start the first
    tool, which runs while the caller works on (creating the container); ``advance_prepared``
    starts the next. A failure here is left for ``enter_user_namespace`` to meet and report.
    Whoever prepares and may then not enter calls ``cancel_prepared``."""
    global _PREPARED
    if mapping.mode != "subuid" or _PREPARED is not None or _INSIDE is not None:
        return
    try:
        holder = _Holder(mapping)
    except OSError:
        return
    try:
        holder.step()
    except OSError:
        holder.discard()
        return
    _PREPARED = holder


def advance_prepared() -> None:
    """Start the prepared namespace's next map tool (once the caller has work for the other
    core again)."""
    if _PREPARED is not None:
        try:
            _PREPARED.step()
        except OSError:
            pass  # tried again by enter_user_namespace, which reports it


def cancel_prepared() -> None:
    """Undo ``prepare_user_namespace`` if ``enter_user_namespace`` did not use it: no process
    of it is left."""
    global _PREPARED
    holder, _PREPARED = _PREPARED, None
    if holder is not None:
        holder.discard()


def reap_maker() -> None:
    """Collect the namespace holder ``enter_user_namespace`` cloned, if any (killed already:
    its exit is not waited for on the way to the container). Its stack is freed only then."""
    global _MAKER
    if _MAKER is not None:
        pid, _MAKER = _MAKER.pid, None
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def _apparmor_restricts() -> bool:
    try:
        with open("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "rb") as f:
            return f.read().strip() == b"1"
    except OSError:
        return False


def run_in_userns(func: Callable[..., T], *args: Any, mapping: IdMapping | None = None,
                  join_pid: int = 0, **kwargs: Any) -> T:
    """Call ``func(*args, **kwargs)`` as root of a fresh user namespace (or, with ``join_pid``,
    in the user and mount namespaces of that process); return its result or re-raise its
    exception here. ``func`` and its arguments must be picklable when the caller has
    threads."""
    mapping = mapping or detect_mapping()
    if _INSIDE is not None and not join_pid and _INSIDE == mapping:
        return func(*args, **kwargs)  # entered already (``enter_user_namespace``)
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
            write_maps(pid, mapping)
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
    import pickle

    if not payload:
        raise SandboxError("the user-namespace helper died without a result")
    status, value = pickle.loads(payload)
    if status == "err":
        raise value
    return value


def _spawned(func: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any],
             mapping: IdMapping, join_pid: int) -> T:
    import pickle
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
    import pickle

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
