"""``exec``: a command in a running container (``sandbox._nsexec`` does the joining)."""

from __future__ import annotations

import json
import os
import signal as _signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from sandbox.errors import SandboxError, SpecError

if TYPE_CHECKING:
    from sandbox.containers import Engine

__all__ = ["ExecResult", "ExecTimeout", "exec_run", "exec_stream"]


@dataclass(frozen=True)
class ExecResult:
    """What an ``exec`` returned: its status and output."""

    returncode: int
    stdout: bytes
    stderr: bytes


class ExecTimeout(SandboxError, TimeoutError):
    """``exec_run`` hit its timeout; the command was killed."""

    def __init__(self, message: str, result: ExecResult) -> None:
        super().__init__(message)
        self.result = result


def _exec_request(engine: Engine, ref: str, argv: Sequence[str], **kw: Any) -> dict[str, Any]:
    from sandbox.lifecycle import ContainerNotRunning, _checked_state, _resolve

    cid, cdir, cfg = _resolve(engine, ref)
    st = _checked_state(engine, cid, cdir, cfg)
    if st.get("status") != "running":
        if st.get("status") == "paused":
            raise SandboxError(f"container {cfg.get('name')} is paused, unpause the container "
                               "before exec")
        raise ContainerNotRunning(str(cfg.get("name")), str(st.get("status")))
    if not argv:
        raise SpecError("no command given to exec")
    return {"op": "exec", "init_pid": st["init_pid"], "init_start": st.get("init_start", 0),
            "spec": cfg["spec"], "argv": list(argv), **kw}


def exec_run(engine: Engine, ref: str, argv: Sequence[str], *, env: Sequence[str] = (),
             workdir: str | None = None, user: str | None = None, input: bytes | None = None,  # noqa: A002
             timeout: float | None = None, tty: bool = False) -> ExecResult:
    """Run ``argv`` in the running container; capture its output.

    The helper that joins the container is a fork of this process when it is single-threaded
    (``runtime.process.can_fork``: a pytest run gets each ``container.run`` 40 ms sooner),
    else a fresh interpreter.
    """
    import subprocess

    from sandbox import _zygote
    from sandbox.runtime.process import can_fork

    req = _exec_request(engine, ref, argv, env=list(env), workdir=workdir, user=user,
                        interactive=input is not None, tty=tty, kill_on_term=True)
    zygote = _zygote.current()
    if zygote is not None:
        return _zygote_exec(zygote, req, input, timeout, argv[0])
    if can_fork():
        return _forked_exec(req, input, timeout, argv[0])
    proc = subprocess.Popen([sys.executable, "-m", "sandbox._nsexec", json.dumps(req)],
                            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(_signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        raise ExecTimeout(f"exec {argv[0]} timed out after {timeout}s",
                          ExecResult(proc.returncode, out, err)) from None
    return ExecResult(proc.returncode, out, err)


def _forked_exec(req: dict[str, Any], data: bytes | None, timeout: float | None,
                 name: str) -> ExecResult:
    """``exec_run`` through a fork of this (single-threaded) process: the same helper code as
    ``python -m sandbox._nsexec``, with pipes for its standard streams."""
    import sandbox._nsexec  # noqa: F401 - loaded here once, not in every helper
    from sandbox import _syscalls

    _syscalls.preload()
    pipes = [os.pipe() for _ in range(3)]  # stdin, stdout, stderr
    pid = os.fork()
    if pid == 0:
        try:
            for r, _w in pipes[1:]:
                os.close(r)
            os.close(pipes[0][1])
            helper_main(req, [pipes[0][0], pipes[1][1], pipes[2][1]])
        finally:
            os._exit(125)
    (in_r, in_w), (out_r, out_w), (err_r, err_w) = pipes
    for fd in (in_r, out_w, err_w):
        os.close(fd)
    out, err, timed_out = _relay(in_w, out_r, err_r, data, timeout)
    status = _stop_helper(pid) if timed_out else os.waitpid(pid, 0)[1]
    code = 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.waitstatus_to_exitcode(
        status)
    result = ExecResult(code, out, err)
    if timed_out:
        raise ExecTimeout(f"exec {name} timed out after {timeout}s", result)
    return result


def helper_main(req: dict[str, Any], stdio: list[int], status: int = -1) -> NoReturn:
    """The exec helper, in a fork of the caller or of its zygote: ``stdio`` become its
    standard streams; its exit status is also written on ``status`` (when not -1)."""
    from sandbox._nsexec import run_request

    code = 125
    try:
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
        for fd in stdio:
            if fd > 2:
                os.close(fd)
        # the caller's sys.stdout/stderr may be pytest's capture: the helper's own messages
        # go to the pipes, as a fresh interpreter's would
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - closed by _exit
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        code = run_request(req)
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        try:
            if status >= 0:
                os.write(status, str(code).encode())
        finally:
            os._exit(code)


def _zygote_exec(zygote: Any, req: dict[str, Any], data: bytes | None, timeout: float | None,
                 name: str) -> ExecResult:
    """``exec_run`` through a helper forked by this process's zygote: the helper writes its
    exit status on a pipe of its own when it ends (the zygote, not we, is its parent)."""
    pipes = [os.pipe() for _ in range(4)]  # stdin, stdout, stderr, status
    try:
        pid = zygote.fork("exec", {"req": req}, [pipes[0][0], pipes[1][1], pipes[2][1],
                                                  pipes[3][1]])
    except BaseException:
        for r, w in pipes:
            os.close(r)
            os.close(w)
        raise
    (in_r, in_w), (out_r, out_w), (err_r, err_w), (st_r, st_w) = pipes
    for fd in (in_r, out_w, err_w, st_w):
        os.close(fd)
    try:
        out, err, timed_out = _relay(in_w, out_r, err_r, data, timeout)
        if timed_out:
            _stop_foreign_helper(pid, st_r)
        text = b""
        while chunk := os.read(st_r, 64):
            text += chunk
    finally:
        os.close(st_r)
    code = int(text) if text.isdigit() else 137  # killed before it could say
    result = ExecResult(code, out, err)
    if timed_out:
        raise ExecTimeout(f"exec {name} timed out after {timeout}s", result)
    return result


def _relay(in_w: int, out_r: int, err_r: int, data: bytes | None,
           timeout: float | None) -> tuple[bytes, bytes, bool]:
    """Feed ``data`` to a helper's stdin and read its stdout and stderr to their end, or until
    ``timeout``: (stdout, stderr, timed out). Closes the three descriptors."""
    import select
    import time

    if not data:
        os.close(in_w)
        in_w = -1
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    pending = memoryview(data or b"")
    deadline = None if timeout is None else time.monotonic() + timeout
    open_fds = [out_r, err_r]
    timed_out = False
    try:
        while open_fds:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                timed_out = True
                break
            writers = [in_w] if in_w >= 0 else []
            readable, writable, _ = select.select(open_fds, writers, [], left)
            if writable:
                try:
                    pending = pending[os.write(in_w, pending[:65536]):]
                except BrokenPipeError:
                    pending = pending[len(pending):]
                if not pending:
                    os.close(in_w)
                    in_w = -1
            for fd in readable:
                chunk = os.read(fd, 1 << 16)
                if chunk:
                    chunks[fd].append(chunk)
                else:
                    open_fds.remove(fd)
    finally:
        for fd in (in_w, out_r, err_r):
            if fd >= 0:
                os.close(fd)
    return b"".join(chunks[out_r]), b"".join(chunks[err_r]), timed_out


def _stop_foreign_helper(pid: int, status_r: int) -> None:
    """:func:`_stop_helper` for a helper that is not our child: its end is the end of its
    status pipe."""
    import select

    os.kill(pid, _signal.SIGTERM)
    if not select.select([status_r], [], [], 5)[0]:
        try:
            os.kill(pid, _signal.SIGKILL)
        except ProcessLookupError:
            pass


def _stop_helper(pid: int) -> int:
    """SIGTERM (the helper kills its command), then SIGKILL after 5 s, as for a spawned one;
    returns its wait status."""
    import time

    os.kill(pid, _signal.SIGTERM)  # our unreaped child: the pid is still ours
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    os.kill(pid, _signal.SIGKILL)
    return os.waitpid(pid, 0)[1]


def exec_stream(engine: Engine, ref: str, argv: Sequence[str], *, env: Sequence[str] = (),
                workdir: str | None = None, user: str | None = None, interactive: bool = False,
                tty: bool = False, detach: bool = False) -> int:
    """The CLI's ``exec``: the command inherits our stdio; returns its exit status."""
    import subprocess

    from sandbox.runtime.process import can_fork

    req = _exec_request(engine, ref, argv, env=list(env), workdir=workdir, user=user,
                        interactive=interactive, tty=tty, detach=detach, tty_proxy=tty)
    if not can_fork():
        return subprocess.run([sys.executable, "-m", "sandbox._nsexec", json.dumps(req)],
                              check=False).returncode
    from sandbox._nsexec import run_request

    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 125
        try:
            code = run_request(req)
        finally:
            os._exit(code)
    old = {s: _signal.signal(s, _signal.SIG_IGN) for s in (_signal.SIGINT, _signal.SIGQUIT)}

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    old[_signal.SIGTERM] = _signal.signal(_signal.SIGTERM, forward)
    old[_signal.SIGHUP] = _signal.signal(_signal.SIGHUP, forward)
    try:
        _, status = os.waitpid(pid, 0)
    finally:
        for s, h in old.items():
            _signal.signal(s, h)
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.waitstatus_to_exitcode(
        status)
