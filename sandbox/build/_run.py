"""RUN: a rootless container on the stage's layers, whose upper dir becomes the step's layer.

The step container is a normal container directory (``containers/<id>/``) whose rootfs stacks
an explicit list of layer dirs (the build's intermediate layers are not images), created here
the way ``Engine.create`` does and run with ``Engine.run``. After a zero exit, the mount points
the runtime made (``/etc/hosts`` & co.) are dropped from the upper dir where the image lacked
them, and the rest is committed inside the user namespace.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from sandbox.build._commit import LayerResult, commit_upper, remove_artifacts
from sandbox.containers import Engine, write_container_files
from sandbox.errors import BuildError
from sandbox.spec import ContainerSpec, Mount, RootfsSpec, validate_spec
from sandbox.store import Store

__all__ = ["BuildInterrupted", "RunJob", "StepOutcome", "reap_stale_steps", "run_step"]

_OWNER = "build-owner"
"""In a step container's directory: the build process that owns it (pid and start time)."""


class BuildInterrupted(BuildError):
    """SIGINT, SIGTERM or SIGHUP during a RUN: the step was killed and nothing stored."""

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(f"build interrupted by {signal.Signals(signum).name} during a RUN "
                         "step; nothing was stored")
        self.exit_code = 128 + signum


@dataclass(frozen=True)
class RunJob:
    argv: tuple[str, ...]
    env: tuple[str, ...]
    workdir: str
    user: str
    network: str = "none"
    files: tuple[tuple[str, str], ...] = ()
    """(container path, content): heredoc scripts placed as executable files."""
    mounts: tuple[Mount, ...] = ()
    """``RUN --mount`` binds, caches and tmpfs."""


def _create(engine: Engine, lowers: Sequence[str], job: RunJob) -> ContainerSpec:
    from sandbox.drivers import select_driver

    store = engine.store
    store.ensure()
    driver = select_driver(store, engine.storage_driver).name
    if driver == "copy":
        raise BuildError("RUN needs the overlay or fuse storage driver (the copy driver cannot "
                         "tell a step's changes from its base)",
                         hint="enable FUSE or kernel overlayfs in user namespaces")
    cid = os.urandom(32).hex()
    cdir = store.container_dir(cid)
    os.mkdir(cdir, 0o700)
    try:
        _write_owner(cdir)
        upper, work, mnt = (os.path.join(cdir, d) for d in ("upper", "work", "rootfs"))
        for d in (upper, work, mnt):
            os.mkdir(d, 0o755)
        if not lowers:
            empty = os.path.join(cdir, "empty")
            os.mkdir(empty, 0o755)
            lowers = [empty]
        mounts = (*_script_mounts(cdir, job.files), *job.mounts)
        mapping = engine.mapping
        spec = ContainerSpec(
            id=cid, name=f"build-{cid[:12]}", image="<build step>", image_id="",
            rootfs=RootfsSpec(driver=driver, lowers=tuple(lowers), upper=upper, work=work,
                              mountpoint=mnt),
            argv=job.argv, env=job.env, workdir=job.workdir or "/", user=job.user,
            hostname=cid[:12], network=job.network, mounts=mounts,
            uid_map=mapping.uid_map, gid_map=mapping.gid_map, map_mode=mapping.mode,
            container_dir=cdir, store_root=store.root, labels={"sandbox.build": "step"})
        validate_spec(spec)
        write_container_files(spec)
    except BaseException:
        engine.remove_dir(cid)
        raise
    return spec


def _write_owner(cdir: str) -> None:
    import json

    from sandbox._cstate import proc_start_time

    with open(os.path.join(cdir, _OWNER), "w", encoding="utf-8") as f:
        json.dump({"pid": os.getpid(), "start": proc_start_time(os.getpid())}, f)


def reap_stale_steps(engine: Engine) -> int:
    """Remove the step containers of builds that died (SIGKILL) before removing them; returns
    how many. (Their processes died with the build: the runtime sets PR_SET_PDEATHSIG.)"""
    import json

    from sandbox._cstate import alive

    removed = 0
    for cid in list(engine.store.iter_containers()):
        try:
            with open(os.path.join(engine.store.container_dir(cid), _OWNER), "rb") as f:
                owner = json.loads(f.read())
            pid, start = int(owner["pid"]), int(owner["start"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a build step (or one being created right now)
        if alive(pid, start):
            continue
        engine.remove_dir(cid)
        removed += 1
    return removed


def _run_container(engine: Engine, spec: ContainerSpec) -> tuple[int, int]:
    """Run the step in the foreground: (exit status, the interrupting signal or 0).

    As ``sandbox run`` our signals are forwarded to the container, except the ones that
    mean "stop": SIGINT, SIGTERM and SIGHUP kill the step (a shell as the container's init
    ignores them and would finish the step, whose layer would then be committed)."""
    import signal

    from sandbox.runtime.init import Forwarder
    from sandbox.runtime.process import start, wait

    class StepForwarder(Forwarder):
        interrupted = 0
        init_pid = 0

        def _handle(self, signum: int, frame: object) -> None:
            if signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                self.interrupted = self.interrupted or signum
                if self.init_pid:
                    # the step's PID 1 (its PID namespace dies with it); the holder then stops
                    # the fuse server and cleans up in order: killing the holder itself ended
                    # the server while step processes still read through it (SIGBUS)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.init_pid, signal.SIGKILL)
                    return
                signum = signal.SIGKILL
            super()._handle(signum, frame)

    forwarder = StepForwarder()
    try:
        started = start(spec, engine.mapping, forwarder)
    except BaseException:
        forwarder.restore()
        raise
    forwarder.init_pid = started.init_pid
    code = wait(started, forwarder=forwarder)
    if started.error is not None:
        raise started.error
    return code, forwarder.interrupted


def _script_mounts(cdir: str, files: Sequence[tuple[str, str]]) -> Iterator[Mount]:
    for i, (path, content) in enumerate(files):
        host = os.path.join(cdir, f"script-{i}")
        with open(host, "w", encoding="utf-8") as f:
            f.write(content)
        os.chmod(host, 0o755)
        yield Mount(target=path, type="bind", source=host, readonly=True)


@contextlib.contextmanager
def _captured(out: int | None) -> Iterator[None]:
    """With ``-q`` the step's output goes to the file ``out`` (the container inherits fds 1
    and 2), shown only if the step fails."""
    if out is None:
        yield
        return
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(out, 1)
        os.dup2(out, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


_OUTPUT_LIMIT = 64 * 1024
"""How much of a failed step's captured output is kept (its end)."""


def _tail(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, _OUTPUT_LIMIT, max(0, size - _OUTPUT_LIMIT))


def _commit_run(store_root: str, upper: str, lowers: list[str],
                source_date_epoch: int | None, extra: list[str]) -> LayerResult | None:
    remove_artifacts(upper, lowers, extra)
    return commit_upper(Store(store_root), upper, source_date_epoch)


@dataclass(frozen=True)
class StepOutcome:
    code: int
    layer: LayerResult | None = None
    """The committed layer (None: nothing changed, or the step failed)."""
    output: bytes = b""
    """With ``quiet``, the end of what a failed step wrote (its stdout and stderr)."""


def run_step(engine: Engine, lowers: Sequence[str], job: RunJob, *,
             quiet: bool = False, source_date_epoch: int | None = None,
             progress: Callable[[str], None] | None = None) -> StepOutcome:
    """Run ``job`` on ``lowers``. ``progress`` gets Docker's "Running in" and "Removing
    intermediate container" lines; with ``quiet`` the step's output is kept aside and
    returned only when it fails."""
    from sandbox.runtime.userns import run_in_userns

    spec = _create(engine, lowers, job)
    say = progress or (lambda line: None)
    say(f" ---> Running in {spec.id[:12]}")
    out = os.open(os.path.join(spec.container_dir, "step-output"),
                  os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600) if quiet else None
    try:
        import sys

        sys.stdout.flush()
        with _captured(out):
            code, interrupted = _run_container(engine, spec)
        if interrupted:
            raise BuildInterrupted(interrupted)
        if code != 0:
            return StepOutcome(code, None, _tail(out) if out is not None else b"")
        result = run_in_userns(_commit_run, engine.store.root, spec.rootfs.upper,
                               list(spec.rootfs.lowers), source_date_epoch,
                               [m.target for m in job.mounts], mapping=engine.mapping)
        return StepOutcome(0, result)
    finally:
        if out is not None:
            os.close(out)
        engine.remove_dir(spec.id)
        say(f"Removing intermediate container {spec.id[:12]}")
