"""A small process that forks the engine's helpers for a large caller: the pytest plugin.

Each container a test gets needs helpers: its monitor (``_monitor``), the process that joins it
for ``exec`` (``_nsexec``), the helper that sets up an isolated test's container ahead
(``runtime.process.prepare_helper``). A single-threaded caller forks itself into them, and a
pytest process is large: the kernel copies its page tables at every fork and, afterwards, every
page pytest writes faults and is copied again (about 1,600 page faults per test in the pytest
process, 7 ms of system time). A threaded caller (a pytest-xdist worker) spawns a fresh
interpreter per helper instead, tens of milliseconds each.

The zygote is spawned once per session, a fresh single-threaded interpreter that loads what the
helpers run; each helper is then a fork of it. It dies with its caller (a parent-death signal),
the helpers it forked for an isolated test with it (theirs); the monitors, detached as ever,
stay with their containers. :func:`current` is the zygote this process uses, if any.
"""

from __future__ import annotations

import _thread
import json
import os
import sys

from sandbox import _sig as signal
from sandbox import _sock
from sandbox.errors import SandboxError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

__all__ = ["Zygote", "current", "start", "stop"]

_CURRENT: Zygote | None = None


class Zygote:
    """The caller's end: ``fork(op, args, fds)`` has the zygote fork a helper."""

    def __init__(self) -> None:
        psock, csock = _sock.socketpair()
        _sock.set_inheritable(csock, True)
        try:
            self.pid = os.posix_spawn(sys.executable, [sys.executable, "-m", "sandbox._zygote",
                                                       str(csock.fileno())], os.environ)
        finally:
            csock.close()
        self.sock = psock
        self._lock = _thread.allocate_lock()  # one request and its answer at a time

    def alive(self) -> bool:
        if self.pid <= 0:
            return False
        try:
            done = os.waitpid(self.pid, os.WNOHANG)[0]
        except ChildProcessError:
            done = self.pid
        if done:
            self.pid = 0
        return self.pid > 0

    def fork(self, op: str, args: dict[str, Any], fds: list[int]) -> int:
        """Fork a helper for ``op`` with ``fds`` (passed, not given away: the caller closes
        its copies); returns the helper's pid."""
        with self._lock:
            try:
                _sock.send_fds(self.sock, [json.dumps({"op": op, **args}).encode()], fds)
                answer = self.sock.recv(64)
            except OSError:
                answer = b""
        if not answer.isdigit():
            raise SandboxError("the session's helper process (sandbox._zygote) is gone")
        return int(answer)

    def fork_reporting(self, op: str, args: dict[str, Any]) -> int:
        """Fork a helper for ``op`` that reports on a pipe: it gets the write end, the caller
        the read end, returned here."""
        r, w = os.pipe()
        try:
            self.fork(op, args, [w])
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
        return r

    def close(self) -> None:
        """End the zygote (it exits when its socket closes) and reap it."""
        self.sock.close()
        if self.pid > 0:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.pid = 0


def current() -> Zygote | None:
    """The zygote this process uses, while it lives."""
    zygote = _CURRENT
    return zygote if zygote is not None and zygote.alive() else None


def start() -> Zygote:
    """Start this process's zygote (once)."""
    global _CURRENT
    if _CURRENT is None or not _CURRENT.alive():
        _CURRENT = Zygote()
    return _CURRENT


def stop() -> None:
    global _CURRENT
    zygote, _CURRENT = _CURRENT, None
    if zygote is not None:
        zygote.close()


# -- the zygote -------------------------------------------------------------------------------

def _monitor(req: dict[str, Any], fds: list[int]) -> NoReturn:
    from sandbox._monitor import monitor_main

    os.setsid()
    if os.fork() == 0:
        monitor_main(req["root"], req["cid"], fds[0], req["map_mode"])
    os._exit(0)


def _exec(req: dict[str, Any], fds: list[int]) -> NoReturn:
    """An exec helper: ``fds`` are its stdin, stdout, stderr and where its status goes."""
    from sandbox._exec import helper_main

    helper_main(req["req"], fds[:3], fds[3])


def _prepare(req: dict[str, Any], fds: list[int]) -> NoReturn:
    from sandbox.runtime.idmap import detect_mapping
    from sandbox.runtime.process import prepare_helper
    from sandbox.spec import spec_from_json

    mapping = detect_mapping(force_single=req["map_mode"] == "single")
    prepare_helper(spec_from_json(req["spec"]), mapping, fds[0])


_HELPERS = {"monitor": _monitor, "exec": _exec, "prepare": _prepare}


def main() -> NoReturn:
    from sandbox import _syscalls as sc

    sock = _sock.from_fd(int(sys.argv[1]))
    _sock.set_inheritable(sock, False)
    sc.set_pdeathsig(signal.SIGKILL)
    if os.getppid() == 1:  # the caller is gone already
        os._exit(0)
    # loaded once here, not in every helper (sandbox._exec alone, with dataclasses, is 8 ms)
    import sandbox._exec  # noqa: F401
    import sandbox._logs  # noqa: F401
    import sandbox._monitor  # noqa: F401
    import sandbox._nsexec  # noqa: F401
    import sandbox.runtime.plan  # noqa: F401
    import sandbox.runtime.process  # noqa: F401

    sc.preload()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's: it closes our socket
    import gc

    gc.freeze()  # the helpers' garbage collections do not touch the zygote's objects' pages
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the helpers
    while True:
        try:
            msg, fds, _, _ = _sock.recv_fds(sock, 1 << 22, 4)
        except InterruptedError:
            continue
        if not msg:
            os._exit(0)
        try:
            req = json.loads(msg)
            helper = _HELPERS[req["op"]]
        except (ValueError, KeyError, TypeError):
            for fd in fds:
                os.close(fd)
            sock.send(b"refused")
            continue
        pid = os.fork()
        if pid == 0:
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)  # as a fresh process
                sock.close()
                helper(req, fds)
            finally:
                os._exit(125)
        for fd in fds:
            os.close(fd)
        sock.send(str(pid).encode())


if __name__ == "__main__":
    main()
