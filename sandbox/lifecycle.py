"""Container lifecycle without a daemon: detached containers, exec, stop, logs, files, ports.

State lives in files under ``containers/<id>/`` (``sandbox._cstate``); a detached container is
owned by its monitor (``sandbox._monitor``), a foreground one by the CLI that runs it. Every
reader checks the owner's (pid, start time) before believing ``running``: a SIGKILLed owner is
found and its container recorded as exited (``cleanup_stale``).

The public API is this module's ``__all__``; the CLI (``sandbox.cli.containers``) and the pytest
plugin use nothing else.
"""

from __future__ import annotations

import os
import time

from sandbox import _control as _ctl
from sandbox import _cstate as cs
from sandbox import _json as json
from sandbox import _sig as _signal
from sandbox._record import field, record, replace
from sandbox.errors import ContainerNotFound, InvalidStateTransition, SandboxError, SpecError
from sandbox.store import unlink_missing_ok

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from typing import Any

    from sandbox._exec import ExecResult, ExecTimeout, exec_run, exec_stream
    from sandbox.containers import Engine, RunOptions
    from sandbox.images import Image
    from sandbox.spec import ContainerSpec

__all__ = [
    "ContainerState", "ExecResult", "HostOptions", "ContainerNotRunning", "ExecTimeout",
    "WaitTimeout", "PendingStart", "create", "start", "start_async", "run_detached",
    "run_detached_async", "run_foreground", "exec_run",
    "exec_stream", "state", "list_containers", "stop", "restart", "kill", "remove", "wait",
    "logs", "diff", "copy_from", "copy_to", "export", "port", "commit", "pause", "unpause",
    "inspect", "rename", "top", "stats", "prune", "cleanup_stale", "parse_signal",
]

_LIVE = cs.LIVE


@record
class ContainerState:
    """A container's lifecycle state as ``ps`` and ``inspect`` report it."""

    id: str
    name: str
    status: str  # created | running | paused | exited | dead
    pid: int
    init_pid: int
    exit_code: int | None
    started_at: str
    finished_at: str
    image: str


@record
class HostOptions:
    """What ``run``/``create`` ask for beyond ``RunOptions`` (Docker's HostConfig)."""

    ports: tuple[Any, ...] = ()          # sandbox._ports.PortBinding
    publish_all: bool = False
    restart: str = "no"
    stop_signal: str = ""
    stop_timeout: int | None = None
    init: bool = False
    ulimits: tuple[dict[str, Any], ...] = ()
    add_hosts: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    memory: int = 0
    nano_cpus: int = 0
    pids_limit: int = 0
    log_opts: dict[str, str] = field(default_factory=dict)


class ContainerNotRunning(InvalidStateTransition):
    """The operation needs a running container."""

    def __init__(self, name: str, status: str, to: str = "exec") -> None:
        super().__init__(status, to, name=name)
        self.message = f"container {name} is not running"


class WaitTimeout(SandboxError, TimeoutError):
    """``wait`` hit its timeout."""


def parse_signal(sig: str | int) -> int:
    """``KILL``, ``SIGKILL``, ``9`` → 9."""
    if isinstance(sig, int):
        return sig
    text = str(sig).strip().upper()
    if text.isdigit():
        return int(text)
    name = text if text.startswith("SIG") else "SIG" + text
    value = getattr(_signal, name, None) if name[3:].isalnum() else None  # not SIG_DFL & co
    if not isinstance(value, int):
        raise SpecError(f"invalid signal: {sig}", hint="use a name like TERM or a number")
    return int(value)


# -- reading state ------------------------------------------------------------------------------

def _resolve(engine: Engine, ref: str) -> tuple[str, str, dict[str, Any]]:
    cid = engine.resolve_container(ref)
    cdir = engine.store.container_dir(cid)
    try:
        cfg = engine.load_config(cid)
    except (OSError, ValueError):
        raise ContainerNotFound(f"no such container: {ref}") from None
    return cid, cdir, cfg


def _checked_state(engine: Engine, cid: str, cdir: str, cfg: dict[str, Any]) -> dict[str, Any]:
    st = cs.read_state(cdir)
    if _owner_died(st) or _died_starting(cdir, st):
        st = _reap_stale(engine, cid, cdir, cfg)
    return st


def _owner_died(st: dict[str, Any]) -> bool:
    """A live status whose recorded owner (monitor or foreground CLI) is gone. A state without
    an owner (``Engine.run`` of the runtime core) is trusted as it is."""
    return cs.owned(st) and not cs.alive(
        int(st.get("monitor_pid") or 0), int(st.get("monitor_start") or 0))


def _died_starting(cdir: str, st: dict[str, Any]) -> dict[str, int]:
    """For a container still "created" whose marker names the foreground run starting it
    (``_cstate.mark_starting``): that run and its PID 1, when the run is gone (killed before it
    could record the container running); else empty."""
    if st.get("status") != "created":
        return {}
    owner = cs.starting_owner(cdir)
    if not owner or cs.alive(owner["monitor_pid"], owner["monitor_start"]):
        return {}
    return owner


def _to_state(cid: str, cfg: dict[str, Any], st: dict[str, Any]) -> ContainerState:
    status = str(st.get("status", "created"))
    live = status in _LIVE
    return ContainerState(
        id=cid, name=str(cfg.get("name", "")), status=status,
        pid=int(st.get("pid") or 0) if live else 0,
        init_pid=int(st.get("init_pid") or 0) if live else 0,
        exit_code=int(st.get("exit_code") or 0) if status in ("exited", "dead") else None,
        started_at=str(st.get("started_at") or "0001-01-01T00:00:00Z"),
        finished_at=str(st.get("finished_at") or "0001-01-01T00:00:00Z"),
        image=str(cfg.get("spec", {}).get("image", "")))


def state(engine: Engine, ref: str) -> ContainerState:
    cid, cdir, cfg = _resolve(engine, ref)
    return _to_state(cid, cfg, _checked_state(engine, cid, cdir, cfg))


def list_containers(engine: Engine, *, all: bool = False) -> list[ContainerState]:  # noqa: A002
    out = []
    for cid in engine.store.iter_containers():
        cdir = engine.store.container_dir(cid)
        try:
            cfg = engine.load_config(cid)
            st = _checked_state(engine, cid, cdir, cfg)
        except (OSError, ValueError, SandboxError):
            continue
        if not os.path.isdir(cdir):
            continue
        if all or st.get("status") in _LIVE:
            out.append((float(cfg.get("created") or 0), _to_state(cid, cfg, st)))
    return [s for _, s in sorted(out, key=lambda x: -x[0])]


def _spec(cfg: dict[str, Any]) -> ContainerSpec:
    from sandbox.spec import spec_from_json

    return spec_from_json(json.dumps(cfg["spec"]))


# -- stale owners -------------------------------------------------------------------------------

def _reap_stale(engine: Engine, cid: str, cdir: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """The owner of a live container, or the foreground run starting one, was seen dead: kill
    what is left, record the truth (an ``--rm`` container goes).

    The state is read again here, not taken from the caller: what the caller read while the
    owner lived may predate the exit the owner recorded just before it went (written before
    it died, so in the file now). Going by the older read turned exit statuses into 137.
    """
    st = cs.read_state(cdir)
    died = _owner_died(st)
    starting = {} if died else _died_starting(cdir, st)
    if not died and not starting:
        return st
    _ctl.kill_leftovers(starting or st)
    _ctl.unmount_rootfs(cfg)
    _drop_cgroup(str(st.get("cgroup") or ""))
    st.update(status="exited", cgroup="", exit_code=137, pid=0, init_pid=0, cpid=0,
              finished_at=cs.rfc3339(),
              error="the container's owner died while starting it (killed?)" if starting
              else "the container's monitor died (killed?)")
    remove_it = bool(cfg.get("spec", {}).get("remove"))
    try:
        if remove_it:
            _remove_now(engine, cid, cdir, volumes=True)
        else:
            cs.write_state(cdir, st)
    except OSError:
        pass
    return st


def cleanup_stale(engine: Engine) -> int:
    """Fix containers whose owner died; returns how many were fixed. Only containers marked
    owned (``_cstate.OWNED_SUFFIX``) can be stale, so a store of many exited ones costs one
    listing (``ps`` and the commands that read a container check its owner themselves)."""
    fixed = 0
    try:
        names = os.listdir(engine.store.containers_dir())
    except FileNotFoundError:
        return 0
    for name in names:
        if not name.endswith(cs.OWNED_SUFFIX):
            continue
        cid = name[:-len(cs.OWNED_SUFFIX)]
        try:
            cdir = engine.store.container_dir(cid)
        except SandboxError:
            continue
        if not os.path.isdir(cdir):  # a removal cut short between the directory and the marker
            unlink_missing_ok(cs.owned_marker(cdir))
            continue
        st = cs.read_state(cdir)
        if not _owner_died(st) and not _died_starting(cdir, st):
            continue
        try:
            _reap_stale(engine, cid, cdir, engine.load_config(cid))
            fixed += 1
        except (OSError, ValueError, SandboxError):
            continue
    _ctl.prune_exit_files(engine, names)
    return fixed


_LAZY_EXEC = ("ExecResult", "ExecTimeout", "exec_run", "exec_stream")


def __getattr__(name: str) -> Any:
    """The exec API lives in ``sandbox._exec``, imported on first use (``run`` never needs it)."""
    if name in _LAZY_EXEC:
        from sandbox import _exec

        return getattr(_exec, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- create / start ---------------------------------------------------------------------------

def create(engine: Engine, image: str, cmd: list[str], opts: RunOptions,
           host: HostOptions | None = None) -> ContainerSpec:
    """``docker create``: the spec, the volumes and ``hostconfig.json``; status ``created``
    (``_cstate.read_state`` of a container without ``state.json``)."""
    host = host or HostOptions()
    img = engine.images.get(image)
    if any(m.type == "volume" for m in opts.mounts) or img.run_config.get("Volumes"):
        from sandbox import volumes

        mounts, vol_records = volumes.prepare_mounts(engine, img, opts.mounts)
    else:
        mounts, vol_records = opts.mounts, []
    spec = engine.create(image, cmd, replace(opts, mounts=mounts), img)
    try:
        cs.write_hostconfig(spec.container_dir,
                            _hostconfig_record(img, opts, host, vol_records, cmd))
        _write_net_files(spec, host)  # no state.json yet: that is status "created"
    except BaseException:
        _ctl.remove_container_dir(engine, spec.id)
        raise
    return spec


def _hostconfig_record(image: Image, opts: RunOptions, host: HostOptions,
                       volumes: list[dict[str, Any]], cmd: list[str]) -> dict[str, Any]:
    """What ``hostconfig.json`` records at create time: the host side of the container (ports,
    restart policy, stop signal, limits, log options, volumes)."""
    ports = [{"container_port": b.container_port, "proto": b.proto, "host_ip": b.host_ip,
              "host_port": b.host_port} for b in host.ports]
    if host.publish_all:
        have = {f"{p['container_port']}/{p['proto']}" for p in ports}
        for key in (image.run_config.get("ExposedPorts") or {}):
            num, _, proto = key.partition("/")
            if f"{num}/{proto or 'tcp'}" not in have:
                ports.append({"container_port": int(num), "proto": proto or "tcp",
                              "host_ip": "", "host_port": 0})
    if opts.network == "host":
        ports = []
    return {
        "ports": ports, "publish_all": host.publish_all, "restart": host.restart,
        "stop_signal": host.stop_signal,
        "image_stop_signal": image.run_config.get("StopSignal") or "",
        "stop_timeout": host.stop_timeout, "init": host.init, "ulimits": list(host.ulimits),
        "add_hosts": list(host.add_hosts), "dns": list(host.dns),
        "dns_search": list(host.dns_search), "memory": host.memory,
        "nano_cpus": host.nano_cpus, "pids_limit": host.pids_limit,
        "log_max_size": _log_size(host.log_opts.get("max-size")),
        "log_max_file": int(host.log_opts.get("max-file") or 0),
        "volumes": volumes, "cmd": list(cmd),
        "exposed": sorted(image.run_config.get("ExposedPorts") or {}),
        "image_volumes": sorted(image.run_config.get("Volumes") or {}),
        "labels_image": image.run_config.get("Labels") or {},
    }


def _log_size(text: str | None) -> int:
    if not text:
        return 0
    from sandbox._logs import parse_size

    return parse_size(text)


def _write_net_files(spec: ContainerSpec, host: HostOptions) -> None:
    if host.add_hosts:
        with open(os.path.join(spec.container_dir, "hosts"), "a") as f:
            for item in host.add_hosts:
                name, _, ip = item.partition(":")
                if ip == "host-gateway":
                    ip = "127.0.0.1"
                f.write(f"{ip}\t{name}\n")
    if host.dns or host.dns_search:
        with open(os.path.join(spec.container_dir, "resolv.conf"), "w") as f:
            if host.dns_search:
                f.write("search " + " ".join(host.dns_search) + "\n")
            for ns in host.dns:
                f.write(f"nameserver {ns}\n")


def start(engine: Engine, spec: ContainerSpec) -> ContainerState:
    """Start a created (or exited) container under its monitor; returns once it runs."""
    return start_async(engine, spec).result()


class PendingStart:
    """A container whose monitor is starting it (:func:`start_async`); :meth:`result` waits
    for the command to run and returns its state, or raises what the start met."""

    def __init__(self, engine: Engine, spec: ContainerSpec, cfg: dict[str, Any],
                 launch: Any) -> None:
        self.engine, self.spec, self._cfg, self._launch = engine, spec, cfg, launch
        self.created = False  # made for this start (``run -d``): an ``--rm`` one goes if it fails

    def result(self) -> ContainerState:
        try:
            return self._result()
        except BaseException:
            spec = self.spec
            if self.created and spec.remove and os.path.isdir(spec.container_dir) and \
                    cs.read_state(spec.container_dir).get("status") not in _LIVE:
                _remove_now(self.engine, spec.id, spec.container_dir, volumes=True)
            raise

    def _result(self) -> ContainerState:
        spec, cdir = self.spec, self.spec.container_dir
        report = self._launch.report()
        if "error" in report:
            from sandbox import errors

            info = report["error"]
            cls = getattr(errors, str(info.get("kind")), SandboxError)
            if not (isinstance(cls, type) and issubclass(cls, SandboxError)) or cls in (
                    errors.RuntimeSetupError, InvalidStateTransition):
                cls = SandboxError
            err = cls(str(info.get("message")))
            err.exit_code = int(info.get("code", 125))
            if spec.remove:
                _remove_now(self.engine, spec.id, cdir, volumes=True)
            raise err
        return _to_state(spec.id, self._cfg, cs.read_state(cdir))


def start_async(engine: Engine, spec: ContainerSpec) -> PendingStart:
    """Hand a created (or exited) container to a new monitor and return at once."""
    from sandbox._monitor import launch_async

    cdir = spec.container_dir
    cfg = engine.load_config(spec.id)
    st = _checked_state(engine, spec.id, cdir, cfg)
    if st.get("status") in _LIVE:
        raise InvalidStateTransition(str(st["status"]), "start", name=spec.name)
    return PendingStart(engine, spec, cfg, launch_async(engine.store.root, spec.id,
                                                         engine.mapping.mode))


def run_detached(engine: Engine, image: str, cmd: list[str], opts: RunOptions,
                 host: HostOptions | None = None) -> ContainerState:
    """``docker run -d``."""
    return run_detached_async(engine, image, cmd, opts, host).result()


def run_detached_async(engine: Engine, image: str, cmd: list[str], opts: RunOptions,
                       host: HostOptions | None = None) -> PendingStart:
    """``docker run -d`` that returns once the monitor is on its way (``.result()`` waits)."""
    spec = create(engine, image, cmd, opts, host)
    try:
        pending = start_async(engine, spec)
    except BaseException:
        if spec.remove and os.path.isdir(spec.container_dir):
            _remove_now(engine, spec.id, spec.container_dir, volumes=True)
        raise
    pending.created = True
    return pending


_CGROUP_V2_MARK = "/sys/fs/cgroup/cgroup.controllers"


def _container_cgroup(cid: str, hostconfig: dict[str, Any]) -> str:
    """A cgroup v2 for the container where the user has a delegated subtree (``_cgroups``)."""
    if not os.path.exists(_CGROUP_V2_MARK):  # no cgroup v2 here: spare the import
        return ""
    from sandbox import _cgroups

    return _cgroups.for_container(cid, hostconfig)


def _drop_cgroup(path: str) -> None:
    if path:
        from sandbox import _cgroups

        _cgroups.remove(path)


def run_foreground(engine: Engine, spec: ContainerSpec,
                   on_started: Callable[[], None] | None = None) -> int:
    """A foreground ``run``: this process owns the container (and is recorded as its owner).
    ``on_started`` is called once the container's command has started (or failed to).

    For the CLI, which exits once this returns: the container's PID 1 may still be exiting
    then (``process.wait(leave_exiting=True)``), and is reaped by the reaper it is handed to,
    as a detached container's monitor is."""
    from sandbox.runtime.process import start as rt_start
    from sandbox.runtime.process import wait as rt_wait

    cdir = spec.container_dir
    cgroup = ""
    try:
        hc = cs.read_hostconfig(cdir)
        if hc.get("ulimits"):
            from sandbox._monitor import _apply_ulimits

            _apply_ulimits(hc["ulimits"])
        cgroup = _container_cgroup(spec.id, hc)
        me = os.getpid()
        early: dict[str, Any] = {}

        def forked(gpid: int) -> None:
            """While PID 1 sets the container up: what the running state needs that is known
            already, and the state's owned marker, naming this process and PID 1 (``gpid``,
            0 where not known yet): if this process is killed before it records the container
            running, ``cleanup_stale`` finds the container by it (``_died_starting``)."""
            early.update(init_start=cs.proc_start_time(gpid) if gpid else 0,
                         monitor_start=cs.proc_start_time(me))
            try:
                cs.mark_starting(cdir, (me, early["monitor_start"]), (gpid, early["init_start"]))
                early["marked"] = True
            except OSError:
                pass

        # inline: this process holds the namespaces (and removes an --rm container itself)
        started = rt_start(spec, engine.mapping, cgroup=cgroup, inline=True, on_forked=forked)
        if on_started is not None:
            on_started()
    except BaseException:
        _drop_cgroup(cgroup)
        if spec.remove:  # nothing of an --rm container is left behind, whatever failed
            _ctl.remove_container_dir(engine, spec.id)
        raise
    if started.error is None:
        kids = cs.children_of(started.init_pid)
        main = kids[0] if kids else 0
        try:
            cs.write_state(cdir, {
                "status": "running", "pid": main, "pid_start": cs.proc_start_time(main),
                "init_pid": started.init_pid,
                "init_start": early.get("init_start") or cs.proc_start_time(started.init_pid),
                "cpid": started.pid, "monitor_pid": me,
                "monitor_start": early.get("monitor_start") or cs.proc_start_time(me),
                "started_at": cs.rfc3339(), "finished_at": "0001-01-01T00:00:00Z",
                "exit_code": 0, "foreground": True, "cgroup": cgroup},
                marked=bool(early.get("marked")))
        except OSError:
            pass
    removed = False

    def remove_now(_code: int) -> None:  # the command has exited; G is still tearing down
        nonlocal removed
        if spec.remove and os.path.exists(cdir):
            _ctl.remove_container_dir(engine, spec.id, spec.name)
            removed = True

    try:
        # G's exit goes on after ours, unless its cgroup is to be removed (only once empty)
        code = rt_wait(started, proxy_tty=spec.tty, on_exit=remove_now,
                       leave_exiting=not cgroup)
    finally:
        _drop_cgroup(cgroup)
    if started.error is not None:
        code = started.error.exit_code
    if spec.remove:
        if not removed:
            if os.path.exists(cdir):
                _ctl.remove_container_dir(engine, spec.id, spec.name)
            engine.release_name(spec.id, spec.name)  # C removed the directory, not its name
        _ctl.drop_volumes(engine, hc, anonymous_only=True)
    else:
        try:
            cs.update_state(cdir, status="exited", exit_code=code, finished_at=cs.rfc3339(),
                            pid=0, init_pid=0, cpid=0, cgroup="", monitor_pid=0, monitor_start=0,
                            error=started.error.one_line() if started.error else "")
        except OSError:
            pass
    if started.error is not None:
        raise started.error
    return code


# -- signals, stop, wait --------------------------------------------------------------------

def kill(engine: Engine, ref: str, signal: str = "KILL") -> None:  # noqa: A002
    """``docker kill``. As in Docker, SIGKILL, the stop signal, or any signal when the container
    has no stop signal of its own, also ends the restart policy (moby ``killWithSignal``:
    ``ExitOnNext``); a container between restarts is then stopped for good. SIGKILL waits until
    the container is stopped, as ``docker kill`` does."""
    cid, cdir, cfg = _resolve(engine, ref)
    sig = parse_signal(signal)
    st = _checked_state(engine, cid, cdir, cfg)
    if st.get("status") not in _LIVE and not (st.get("restarting") and _monitor_alive(st)):
        raise ContainerNotRunning(str(cfg.get("name")), str(st.get("status")), "kill")
    if sig == _signal.SIGKILL:
        _halt(engine, cid, cdir, cfg, sig, 0.0)
        return
    if _ends_restarts(cdir, sig):
        st = _set_manual_stop(cdir)
        if st.get("status") not in _LIVE:  # between restarts: there is no process to signal
            _wait_owner(engine, cid, cdir, cfg, st)
            return
    if st.get("status") in _LIVE:
        _ctl.send(st, sig)


def _ends_restarts(cdir: str, sig: int) -> bool:
    hc = cs.read_hostconfig(cdir)
    own = hc.get("stop_signal") or hc.get("image_stop_signal")
    return sig == _signal.SIGKILL or not own or parse_signal(str(own)) == sig


def _monitor_alive(st: dict[str, Any]) -> bool:
    return cs.alive(int(st.get("monitor_pid") or 0), int(st.get("monitor_start") or 0))


def _set_manual_stop(cdir: str) -> dict[str, Any]:
    """Tell the monitor not to restart the container, under the lock its restart check takes
    (``sandbox._monitor.Monitor._launch``); returns the state as it is at that moment."""
    try:
        with cs.state_lock(cdir):
            return cs.update_state(cdir, manual_stop=True)
    except OSError:
        return {"status": "removed"}


def _halt(engine: Engine, cid: str, cdir: str, cfg: dict[str, Any], sig: int,
          timeout: float) -> dict[str, Any]:
    """Stop the container for good, whatever its monitor is doing, and wait until it is.

    The state read with ``manual_stop`` set is the whole truth: either a run is recorded in it
    (that run is signalled, and after it the monitor restarts nothing) or no run will start
    any more. Then the monitor is waited for, so that after ``stop`` nothing of this container
    is left that could run it again or race a following ``start``. Returns that state.
    """
    st = _set_manual_stop(cdir)
    if st.get("status") in _LIVE:
        init_pid, init_start = int(st.get("init_pid") or 0), int(st.get("init_start") or 0)
        if st.get("status") == "paused" or sig == _signal.SIGKILL:
            _ctl.send(st, _signal.SIGKILL)
        else:
            _ctl.send(st, sig)
            if not _ctl.wait_pid_exit(init_pid, init_start, timeout):
                _ctl.send(st, _signal.SIGKILL)
        _ctl.wait_pid_exit(init_pid, init_start, 10)
    _wait_owner(engine, cid, cdir, cfg, st)
    return st


def _wait_owner(engine: Engine, cid: str, cdir: str, cfg: dict[str, Any],
                st: dict[str, Any]) -> None:
    """Wait for the monitor to record the exit and go; a foreground owner (a CLI, maybe this
    very process) only for the record."""
    if not st.get("foreground"):
        _ctl.wait_pid_exit(int(st.get("monitor_pid") or 0), int(st.get("monitor_start") or 0),
                           10)
    _wait_recorded(engine, cid, cdir, cfg)


def _wait_recorded(engine: Engine, cid: str, cdir: str, cfg: dict[str, Any],
                   timeout: float = 10.0) -> dict[str, Any]:
    """After the container died: wait until its owner recorded it (or is gone itself)."""
    deadline = time.monotonic() + timeout
    while True:
        if not os.path.isdir(cdir):
            return {"status": "removed"}
        st = _checked_state(engine, cid, cdir, cfg)
        if st.get("status") not in _LIVE or time.monotonic() > deadline:
            return st
        _ctl.wait_pid_exit(int(st.get("monitor_pid") or 0), int(st.get("monitor_start") or 0),
                       0.02)


def _stop_signal(cfg: dict[str, Any], cdir: str) -> str:
    hc = cs.read_hostconfig(cdir)
    return str(hc.get("stop_signal") or hc.get("image_stop_signal") or "SIGTERM")


def stop(engine: Engine, ref: str, *, timeout: float | None = 10,
         signal: str | None = None) -> None:  # noqa: A002
    """``docker stop``: the stop signal, SIGKILL after ``timeout``; the restart policy does not
    bring the container back (not even one already on its way back) until it is started."""
    cid, cdir, cfg = _resolve(engine, ref)
    st = _checked_state(engine, cid, cdir, cfg)
    if st.get("status") not in _LIVE and not _monitor_alive(st):
        return
    if timeout is None:
        timeout = cs.read_hostconfig(cdir).get("stop_timeout")
        timeout = 10 if timeout is None else timeout
    _halt(engine, cid, cdir, cfg, parse_signal(signal or _stop_signal(cfg, cdir)),
          float(timeout))


def restart(engine: Engine, ref: str, *, timeout: float | None = 10) -> ContainerState:
    cid, cdir, cfg = _resolve(engine, ref)
    stop(engine, cid, timeout=timeout)
    return start(engine, _spec(cfg))


def wait(engine: Engine, ref: str, timeout: float | None = None) -> int:
    try:
        cid, cdir, cfg = _resolve(engine, ref)
    except ContainerNotFound:
        gone = os.path.join(engine.store.containers_dir(), ref)
        if len(ref) == 64 and os.path.exists(gone + cs.EXIT_SUFFIX):
            return _ctl.exit_file_code(gone)  # an --rm container that has already gone
        raise
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if not os.path.isdir(cdir):
            return _ctl.exit_file_code(cdir)
        st = _checked_state(engine, cid, cdir, cfg)
        if st.get("status") in ("exited", "dead"):
            return int(st.get("exit_code") or 0)
        left = 0.5 if deadline is None else deadline - time.monotonic()
        if left <= 0:
            raise WaitTimeout(f"container {cfg.get('name')} still running after {timeout}s")
        if st.get("status") == "created":
            time.sleep(min(0.05, left))
            continue
        _ctl.wait_pid_exit(int(st.get("init_pid") or 0), int(st.get("init_start") or 0),
                       min(0.5, left))
        if not cs.alive(int(st.get("init_pid") or 0), int(st.get("init_start") or 0)):
            _ctl.wait_pid_exit(int(st.get("monitor_pid") or 0), int(st.get("monitor_start") or 0),
                           0.02)


# -- pause ----------------------------------------------------------------------------------

def pause(engine: Engine, ref: str) -> None:
    cid, cdir, cfg = _resolve(engine, ref)
    with cs.state_lock(cdir):
        st = _checked_state(engine, cid, cdir, cfg)
        if st.get("status") != "running":
            raise ContainerNotRunning(str(cfg.get("name")), str(st.get("status")), "pause")
        if not _freeze(st, True):
            _ctl.signal_all(st, _signal.SIGSTOP)
        cs.update_state(cdir, status="paused")


def unpause(engine: Engine, ref: str) -> None:
    cid, cdir, cfg = _resolve(engine, ref)
    with cs.state_lock(cdir):
        st = _checked_state(engine, cid, cdir, cfg)
        if st.get("status") != "paused":
            raise SandboxError(f"container {cfg.get('name')} is not paused")
        cs.update_state(cdir, status="running")
        if not _freeze(st, False):
            _ctl.signal_all(st, _signal.SIGCONT)


def _freeze(st: dict[str, Any], frozen: bool) -> bool:
    """The cgroup freezer where the container has a cgroup; False: use signals."""
    if not st.get("cgroup"):
        return False
    from sandbox import _cgroups

    return _cgroups.freeze(str(st["cgroup"]), frozen)


# -- remove -----------------------------------------------------------------------------------

def _remove_now(engine: Engine, cid: str, cdir: str, *, volumes: bool) -> None:
    hc = cs.read_hostconfig(cdir)
    try:
        cfg = engine.load_config(cid)
        _ctl.unmount_rootfs(cfg)
    except (OSError, ValueError):
        pass
    _ctl.remove_container_dir(engine, cid)
    try:
        os.unlink(cdir + cs.EXIT_SUFFIX)
    except FileNotFoundError:
        pass
    if volumes:
        _ctl.drop_volumes(engine, hc, anonymous_only=True)


def remove(engine: Engine, ref: str, *, force: bool = False, volumes: bool = False) -> None:
    """``rm``: no process, mount or directory of the container is left."""
    cid, cdir, cfg = _resolve(engine, ref)
    st = _checked_state(engine, cid, cdir, cfg)
    if st.get("status") in _LIVE and not force:
        raise SandboxError(f"cannot remove container {cfg.get('name')}: container is "
                           f"{st.get('status')}", hint="stop the container before removing "
                                                       "or use rm -f")
    if st.get("status") in _LIVE or _monitor_alive(st):
        # running, or a monitor waiting to restart it (--restart) or finishing up
        st = _halt(engine, cid, cdir, cfg, _signal.SIGKILL, 0.0)
        _ctl.kill_leftovers(st)
        if not st.get("foreground") and _monitor_alive(st):  # stuck: not past the directory
            try:
                os.kill(int(st["monitor_pid"]), _signal.SIGKILL)
            except ProcessLookupError:
                pass
            _ctl.wait_pid_exit(int(st["monitor_pid"]), int(st.get("monitor_start") or 0), 5)
    _remove_now(engine, cid, cdir, volumes=volumes)


def prune(engine: Engine) -> list[str]:
    """``container prune``: remove every stopped container."""
    cleanup_stale(engine)
    removed = []
    for s in list_containers(engine, all=True):
        if s.status in ("exited", "dead", "created"):
            try:
                remove(engine, s.id)
                removed.append(s.id)
            except SandboxError:
                continue
    return removed


def rename(engine: Engine, ref: str, new_name: str) -> None:
    from sandbox.containers import _check_name

    cid, cdir, cfg = _resolve(engine, ref)
    _check_name(new_name)
    with engine.store.lock("names"):
        owner = engine.name_owner(new_name)
        if owner is not None and owner != cid:
            raise SandboxError(f'the container name "/{new_name}" is already in use by '
                               f'container "{owner}"')
        old = str(cfg.get("name") or "")
        engine._claim_name(new_name, cid)
        cfg["name"] = new_name
        cfg["spec"]["name"] = new_name
        engine.store.write_json(os.path.join(cdir, "config.json"), cfg)
        if old and old != new_name:
            engine.release_name(cid, old)


# -- logs, ports --------------------------------------------------------------------------------

def logs(engine: Engine, ref: str, *, stdout: bool = True, stderr: bool = True,
         tail: int | None = None, since: Any = None, until: Any = None, follow: bool = False,
         timestamps: bool = False) -> Iterator[tuple[str, bytes]]:
    from sandbox._logs import parse_since, read_log

    cid, cdir, cfg = _resolve(engine, ref)
    streams = tuple(s for s, on in (("stdout", stdout), ("stderr", stderr)) if on)

    def running() -> bool:
        return os.path.isdir(cdir) and _checked_state(engine, cid, cdir, cfg).get(
            "status") in _LIVE

    def when(flag: str, value: Any) -> float | None:
        try:
            return parse_since(value)
        except (ValueError, OverflowError):
            raise SpecError(f"invalid value for {flag}: {value!r}",
                            hint="a Unix time, a time such as 2024-01-02T03:04:05Z, or a "
                                 "duration such as 10m") from None

    return read_log(os.path.join(cdir, "log.json"), streams=streams, tail=tail,
                    since=when("--since", since), until=when("--until", until), follow=follow,
                    timestamps=timestamps, running=running)


def port(engine: Engine, ref: str, container_port: int | None = None,
         proto: str = "tcp") -> list[tuple[str, int]]:
    cid, cdir, cfg = _resolve(engine, ref)
    st = _checked_state(engine, cid, cdir, cfg)
    if st.get("status") not in _LIVE:
        return []
    out = []
    for key, binds in (st.get("ports") or {}).items():
        if container_port is None or key == f"{container_port}/{proto}":
            out += [(str(ip), int(p)) for ip, p in binds]
    return out


# -- files, images, inspection (sandbox._commit, sandbox._inspect) --------------------------------

def diff(engine: Engine, ref: str) -> list[tuple[str, str]]:
    from sandbox._commit import container_diff

    cid, cdir, cfg = _resolve(engine, ref)
    return container_diff(engine, cfg)


def _file_request(engine: Engine, ref: str, op: str, **kw: Any) -> dict[str, Any]:
    cid, cdir, cfg = _resolve(engine, ref)
    st = _checked_state(engine, cid, cdir, cfg)
    running = st.get("status") in _LIVE
    return {"op": op, "running": running, "init_pid": st.get("init_pid", 0),
            "init_start": st.get("init_start", 0), "spec": cfg["spec"],
            "name": cfg.get("name", cid[:12]), "map_mode": engine.mapping.mode, **kw}


def copy_from(engine: Engine, ref: str, src: str, dest: str, *, follow_links: bool = False,
              out: Any = None) -> None:
    """``cp CONTAINER:SRC DEST`` (``dest == "-"``: a tar on ``out`` or stdout)."""
    from sandbox._commit import copy_from_container

    copy_from_container(_file_request(engine, ref, "cp_out", path=src, follow=follow_links),
                        dest, out=out)


def copy_to(engine: Engine, ref: str, src: str, dest: str, *, stdin: Any = None) -> None:
    """``cp SRC CONTAINER:DEST`` (``src == "-"``: a tar from ``stdin``)."""
    from sandbox._commit import copy_into_container

    copy_into_container(_file_request(engine, ref, "cp_in", path=dest), src, stdin=stdin)


def export(engine: Engine, ref: str, out: Any) -> None:
    """``export``: the container's filesystem as a tar written to the binary stream ``out``."""
    from sandbox._commit import run_file_helper

    run_file_helper(_file_request(engine, ref, "export"), stdout=out)


def commit(engine: Engine, ref: str, name: str | None, *, message: str = "",
           changes: dict[str, Any] | None = None, author: str = "",
           pause_container: bool = True) -> Image:
    from sandbox._commit import commit_container

    cid, cdir, cfg = _resolve(engine, ref)
    st = _checked_state(engine, cid, cdir, cfg)
    paused = False
    if pause_container and st.get("status") == "running":
        pause(engine, cid)
        paused = True
    try:
        return commit_container(engine, cfg, name, message=message, changes=changes or {},
                                author=author)
    finally:
        if paused:
            unpause(engine, cid)


def inspect(engine: Engine, ref: str) -> dict[str, Any]:
    from sandbox._inspect import inspect_container

    cid, cdir, cfg = _resolve(engine, ref)
    st = _checked_state(engine, cid, cdir, cfg)
    return inspect_container(engine, cid, cfg, st, cs.read_hostconfig(cdir))


def top(engine: Engine, ref: str) -> tuple[list[str], list[list[str]]]:
    from sandbox._inspect import top_rows

    cid, cdir, cfg = _resolve(engine, ref)
    st = _checked_state(engine, cid, cdir, cfg)
    if st.get("status") not in _LIVE:
        raise ContainerNotRunning(str(cfg.get("name")), str(st.get("status")), "top")
    return top_rows(int(st["init_pid"]))


def stats(engine: Engine, refs: Sequence[str] = (), *, interval: float = 0.5
          ) -> list[dict[str, Any]]:
    from sandbox._inspect import sample_stats

    targets = []
    cgroups = {}
    for s in (list_containers(engine) if not refs else [state(engine, r) for r in refs]):
        if s.status in _LIVE:
            targets.append(s)
            cgroups[s.id] = str(cs.read_state(engine.store.container_dir(s.id)).get("cgroup")
                                or "")
    return sample_stats(targets, interval, cgroups)
