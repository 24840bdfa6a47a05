"""``exec``: a command in a running container (``sandbox._nsexec`` does the joining)."""

from __future__ import annotations

import json
import os
import signal as _signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
    """Run ``argv`` in the running container; capture its output (a fresh helper process)."""
    import subprocess

    req = _exec_request(engine, ref, argv, env=list(env), workdir=workdir, user=user,
                        interactive=input is not None, tty=tty, kill_on_term=True)
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


def exec_stream(engine: Engine, ref: str, argv: Sequence[str], *, env: Sequence[str] = (),
                workdir: str | None = None, user: str | None = None, interactive: bool = False,
                tty: bool = False, detach: bool = False) -> int:
    """The CLI's ``exec``: the command inherits our stdio; returns its exit status."""
    import subprocess
    import threading

    req = _exec_request(engine, ref, argv, env=list(env), workdir=workdir, user=user,
                        interactive=interactive, tty=tty, detach=detach, tty_proxy=tty)
    from sandbox import _monitor

    if not _monitor.ALLOW_FORK or threading.active_count() > 1:
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
