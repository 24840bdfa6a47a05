"""The caller's side of a container: start C, write its maps, relay, wait.

A single-threaded caller (the CLI) forks C directly: the cheapest start. A caller that may have
threads (pytest, a monitor) spawns ``python -m sandbox.runtime.init`` instead (DESIGN decision 1):
``unshare(CLONE_NEWUSER)`` is EINVAL in a multi-threaded process, and forking one is fragile.
"""

from __future__ import annotations

import errno
import os
import select
import sys
import time

from sandbox import _sig as signal
from sandbox import _sock, errors
from sandbox import _syscalls as sc
from sandbox.runtime.idmap import IdMapping, MapError, map_failure, write_maps
from sandbox.runtime.init import (
    Forwarder,
    container_main,
    init_main,
    namespace_flags,
)
from sandbox.runtime.plan import build_plan
from sandbox.runtime.userns import cancel_prepared, enter_user_namespace, reap_maker
from sandbox.spec import ContainerSpec, spec_to_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn

    from sandbox.runtime.network import NetHelper


__all__ = ["Prepared", "Started", "start", "wait", "run", "run_callable", "prepare_callable"]


class Started:
    """A container whose command has been exec'd (or whose setup failed)."""

    __slots__ = ("pid", "init_pid", "master_fd", "error", "forwarder", "network", "done_fd")

    def __init__(self, pid: int, forwarder: Forwarder | None = None) -> None:
        self.pid = pid            # C, our child (G itself when started inline)
        self.done_fd = -1         # inline: G writes the command's status here before exiting
        self.init_pid = 0         # G, the container's PID 1, as the host sees it
        self.master_fd = -1       # the pty master with -t
        self.error: errors.SandboxError | None = None
        self.forwarder = forwarder  # our signals → C, from before the fork
        self.network: NetHelper | None = None  # slirp4netns or pasta


def has_threads() -> bool:
    """Whether this process has more than one thread, as the kernel counts them: the C threads
    of extension modules too, which ``threading`` does not see."""
    try:
        with open("/proc/self/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[17]) > 1  # num_threads
    except (OSError, ValueError, IndexError):
        threading = sys.modules.get("threading")
        return threading is not None and threading.active_count() > 1


def can_fork() -> bool:
    """Whether a helper (a container's first process, a monitor, an exec helper) may be a fork
    of this process rather than a fresh interpreter: only a single-threaded process forks
    safely, and ``SANDBOX_SPAWN_HELPER=1`` asks for fresh interpreters always."""
    return os.environ.get("SANDBOX_SPAWN_HELPER") != "1" and not has_threads()


def _must_spawn() -> bool:
    return not can_fork()


def _error_from(payload: bytes) -> errors.SandboxError:
    import json

    try:
        data: dict[str, Any] = json.loads(payload)
        found = getattr(errors, str(data.get("kind")), None)
        cls: type[errors.SandboxError] = errors.SandboxError
        if (isinstance(found, type) and issubclass(found, errors.SandboxError)
                and found not in (errors.RuntimeSetupError, errors.InvalidStateTransition)):
            cls = found  # those two take other constructor arguments
        err = cls(str(data.get("message", "container setup failed")))
        err.exit_code = int(data.get("code", cls.exit_code))
        return err
    except (ValueError, TypeError):
        return errors.SandboxError("container setup failed")


def start(spec: ContainerSpec, mapping: IdMapping, forwarder: Forwarder | None = None,
          cgroup: str = "", *, inline: bool = False,
          on_forked: Callable[[int], None] | None = None) -> Started:
    """Start the container; returns once its command is exec'd or its setup has failed.

    ``cgroup``: a cgroup v2 directory (``sandbox._cgroups.create``) the container's first
    process is moved into before it unshares its cgroup namespace.

    ``inline``: this process becomes the namespace holder (C) itself, and stays in the
    container's user namespace, where it can remove the container's files: for the CLI, which
    owns a foreground container until it ends. One fork fewer, and C's exit is off the path.
    Where C must be a process of its own (a fuse server or an in-memory layer to hold, a
    network helper to start from outside, threads), C is forked or spawned as without it.

    ``on_forked``: called with G's pid as soon as G exists, to use the time G takes to set the
    container up (this process only waits meanwhile); where C is a process of its own, with 0
    as soon as C exists (G's pid is known only once the handshake has it).

    Our signals go to the container from the moment it exists: through ``forwarder`` if the
    caller installed one, else through one installed here (main thread only), which ``wait``
    then uses and removes.
    """
    if forwarder is None and _in_main_thread():
        forwarder = Forwarder()
    if (inline and can_fork() and spec.network in ("none", "host")
            and spec.rootfs.driver != "fuse" and not spec.rootfs.scratch):
        return _start_inline(spec, mapping, forwarder, cgroup, on_forked)
    cancel_prepared()  # a user namespace the CLI prepared for an inline start is not used
    psock, csock = _sock.socketpair()
    if _must_spawn():
        _sock.set_inheritable(csock, True)
        pid = os.posix_spawn(sys.executable,
                             [sys.executable, "-m", "sandbox.runtime.init", str(csock.fileno())],
                             os.environ)
        psock.send(spec_to_json(spec).encode())
    else:
        # libc's entry points loaded here, not in C: importing _ctypes in a forked child costs
        # twice as much (each page it touches is a copy-on-write fault), and C is on the path
        sc.preload()
        pid = os.fork()
        if pid == 0:
            if forwarder is not None:
                forwarder.restore()
            psock.close()
            container_main(spec, csock)
    if forwarder is not None:
        forwarder.set_target(pid)
    csock.close()
    started = Started(pid, forwarder)
    try:
        if on_forked is not None:
            on_forked(0)
        _handshake(psock, started, mapping, spec.network, cgroup)
    finally:
        psock.close()
    return started


def _start_inline(spec: ContainerSpec, mapping: IdMapping, forwarder: Forwarder | None,
                  cgroup: str, on_forked: Callable[[int], None] | None = None) -> Started:
    """``start(inline=True)``: enter the user namespace, make the PID one, fork G."""
    sc.preload()
    try:
        enter_user_namespace(mapping)
    except errors.SandboxError as exc:
        started = Started(0, forwarder)
        started.error = exc
        return started
    sc.unshare(sc.CLONE_NEWPID)  # for our children: G is its PID 1
    psock, csock = _sock.socketpair()
    done_r, done_w = os.pipe2(os.O_CLOEXEC) if spec.remove else (-1, -1)
    # the network namespace (0.6-0.8 ms of the kernel's, and lo up) is made here while G
    # makes the others and mounts the rootfs
    net_made = spec.network == "none"
    plan = build_plan(spec, net_made=net_made)
    namespaces = namespace_flags(spec) & ~(sc.CLONE_NEWNET if net_made else 0)
    pid = os.fork()
    if pid == 0:
        if forwarder is not None:
            forwarder.restore()
        psock.close()
        if done_r >= 0:
            os.close(done_r)
        # settle=False: the CLI's own foreground container, whose command's /proc entry
        # nobody reads the moment it starts (0.3 ms of every run)
        init_main(spec, csock, done_fd=done_w, namespaces=namespaces,
                  cgroup_wait=bool(cgroup), settle=False, plan=plan, net_made=net_made)
    csock.close()
    if done_w >= 0:
        os.close(done_w)
    if forwarder is not None:
        forwarder.set_target(pid)
    started = Started(pid, forwarder)
    started.init_pid = pid
    started.done_fd = done_r
    try:
        if cgroup:
            from sandbox._cgroups import enter

            try:
                enter(cgroup, pid)
            except OSError as exc:
                started.error = errors.SandboxError(
                    f"cannot move the container into its cgroup {cgroup}: {exc.strerror}")
                _kill_quietly(pid)
                return started
            psock.send(b"C")
        if net_made:
            _make_net(psock, pid)
        if on_forked is not None:
            on_forked(pid)
        _handshake(psock, started, mapping, spec.network)
    finally:
        psock.close()
    return started


def _make_net(sock: _sock.Socket, gpid: int) -> None:
    """For an inline start: make the container's network namespace (this process moves into
    it, and has no use for the network afterwards), bring ``lo`` up and send it to G.

    On a CPU other than G's: a forked child starts on its parent's CPU, and the scheduler
    leaves the two to share it for milliseconds while another one idles."""
    mask = _move_off(_cpu_of(gpid))
    try:
        sc.unshare(sc.CLONE_NEWNET)
        sc.loopback_up()
        fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        fd, why = -1, (exc.strerror or str(exc)).encode()
    finally:
        if mask:
            try:
                os.sched_setaffinity(0, mask)
            except OSError:
                pass
    try:
        if fd >= 0:
            _sock.send_fds(sock, [b"L"], [fd])
        else:
            sock.send(b"X" + why)
    except OSError:
        pass  # G is gone: the handshake reads why
    finally:
        if fd >= 0:
            os.close(fd)


def _move_off(cpu: int) -> set[int]:
    """Move this process to another CPU than ``cpu`` it may run on; returns the affinity to
    restore, or an empty set where nothing was changed (no other CPU, or the move refused:
    this is only about speed)."""
    try:
        mask = os.sched_getaffinity(0)
        away = mask - {cpu}
        if not away or away == mask:
            return set()
        os.sched_setaffinity(0, away)
    except OSError:
        return set()
    return mask


def _cpu_of(pid: int) -> int:
    """The CPU process ``pid`` last ran on (``/proc/PID/stat``), -1 if unknown."""
    from sandbox._cstate import proc_stat  # loaded already where this runs (the CLI)

    try:
        return int(proc_stat(pid)[36])  # field 39, "processor"
    except (ValueError, IndexError):
        return -1


def _in_main_thread() -> bool:
    threading = sys.modules.get("threading")
    return threading is None or threading.current_thread() is threading.main_thread()


def _handshake(sock: _sock.Socket, started: Started, mapping: IdMapping,
               network: str = "none", cgroup: str = "") -> None:
    while True:
        msg, fds, _, _ = _sock.recv_fds(sock, 1 << 16, 1)
        if not msg:
            return
        tag, payload = msg[:1], msg[1:]
        if tag == b"U":
            try:
                write_maps(started.pid, mapping)
            except MapError as exc:
                started.error = map_failure(exc, subuid=mapping.mode == "subuid")
                sock.send(b"X")
                return
            if cgroup:
                from sandbox._cgroups import enter

                try:
                    enter(cgroup, started.pid)
                except OSError as exc:
                    started.error = errors.SandboxError(
                        f"cannot move the container into its cgroup {cgroup}: {exc.strerror}")
                    sock.send(b"X")
                    return
            sock.send(b"M")
        elif tag == b"G":
            started.init_pid = int(payload)
            if network.startswith(("slirp4netns", "pasta")):
                from sandbox.runtime.network import start_network

                try:
                    started.network = start_network(network, started.init_pid)
                except errors.SandboxError as exc:
                    started.error = exc
                    _kill_quietly(started.pid)
                    return
                sock.send(b"N")
        elif tag == b"T" and fds:
            started.master_fd = fds[0]
        elif tag == b"E":
            started.error = _error_from(payload)
        for fd in fds[1:]:
            os.close(fd)


def stop_network(started: Started) -> None:
    """End the container's slirp4netns or pasta, if it has one."""
    if started.network is not None:
        helper, started.network = started.network, None
        helper.stop()


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait(started: Started, *, proxy_tty: bool = False, forwarder: Forwarder | None = None,
         on_exit: Callable[[int], None] | None = None, leave_exiting: bool = False) -> int:
    """Wait for C, forwarding our signals to the container; returns its exit status.

    ``on_exit``, for a container started inline, is called with the status as soon as the
    command has exited, before G is reaped: G's exit (tearing the namespaces down) and the
    caller's cleanup then overlap.

    ``leave_exiting``, for a caller about to exit (the CLI): once an inline G has reported the
    command's status, it is returned without waiting for G to be reaped. G has already sent
    SIGKILL to the rest of the container and is on its way out; what remains is the kernel
    tearing its namespaces down (1-1.5 ms, mostly RCU grace periods). The caller's exit then
    hands G to the reaper, as C's exit does (``init._wait_init``)."""
    pid = started.pid
    forwarder = forwarder or started.forwarder
    if forwarder is None and _in_main_thread() and pid:
        forwarder = Forwarder()
        forwarder.set_target(pid)
    try:
        if not pid:
            return 125  # never started: started.error says why
        if started.master_fd >= 0 and proxy_tty:
            _proxy_pty(started.master_fd)
        if started.done_fd >= 0:
            done, started.done_fd = started.done_fd, -1
            data = os.read(done, 2)
            os.close(done)
            if len(data) == 2:
                code = int.from_bytes(data, "little")
                if on_exit is not None:
                    on_exit(code)
                if leave_exiting:
                    return code
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except ChildProcessError:
                return 125
        if os.WIFSIGNALED(status):
            return 128 + os.WTERMSIG(status)
        return os.waitstatus_to_exitcode(status)
    finally:
        reap_maker()
        stop_network(started)
        if forwarder is not None:
            forwarder.restore()
        started.forwarder = None
        if started.master_fd >= 0:
            os.close(started.master_fd)
            started.master_fd = -1


def _copy_winsize(src: int, dst: int) -> None:
    import fcntl
    import termios

    try:
        size = fcntl.ioctl(src, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(dst, termios.TIOCSWINSZ, size)
    except OSError:
        pass


def _proxy_pty(master: int) -> None:
    """Relay our terminal and the container's pty until the pty closes (``docker run -t``)."""
    import termios
    import tty

    stdin_tty = os.isatty(0)
    saved = termios.tcgetattr(0) if stdin_tty else None
    if stdin_tty:
        _copy_winsize(0, master)
        signal.signal(signal.SIGWINCH, lambda *_: _copy_winsize(0, master))
        tty.setraw(0)
    try:
        relay_pty(master)
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)


def relay_pty(master: int) -> None:
    """Copy the pty's output to our stdout and our stdin to the pty until the pty closes.
    Needs nothing but ``os`` and ``select``: ``exec`` relays after joining the container's
    mount namespace, where the host's standard library is out of reach."""
    watch = [master, 0]
    while True:
        try:
            ready, _, _ = select.select(watch, [], [])
        except InterruptedError:
            continue
        if master in ready:
            try:
                data = os.read(master, 65536)
            except OSError as exc:
                if exc.errno == errno.EIO:  # the last holder of the slave closed it
                    return
                raise
            if not data:
                return
            os.write(1, data)
        if 0 in ready:
            data = os.read(0, 65536)
            if not data:
                watch.remove(0)
            else:
                os.write(master, data)


def run_callable(spec: ContainerSpec, mapping: IdMapping, payload: Callable[[], bytes], *,
                 timeout: float | None = None) -> tuple[int, bytes]:
    """Fork this process into a fresh container and call ``payload`` there (pytest's
    ``isolate=True``); returns (Docker-style status, the bytes ``payload`` returned).

    The one place a possibly threaded caller forks (STYLE 3): the child is single-threaded,
    unshares at once and touches no lock the parent's threads may hold. On ``timeout`` the whole
    container is killed and the status is 137.
    """
    sc.preload()  # once per process: not in every child
    psock, csock = _sock.socketpair()
    result_r, result_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        psock.close()
        os.close(result_r)
        container_main(spec, csock, payload, result_w)
    csock.close()
    os.close(result_w)
    started = Started(pid)
    try:
        _handshake(psock, started, mapping, spec.network)
    finally:
        psock.close()
    try:
        code, data = _collect(result_r, pid, (started.init_pid, pid), timeout)
    finally:
        stop_network(started)
    if started.error is not None:
        raise started.error
    return code, data


def _hold() -> bytes:
    """PID 1's child in a prepared container: waits (the test body joins from outside)."""
    while True:
        time.sleep(3600)


class Prepared:
    """A container set up ahead of use (:func:`prepare_callable`): its namespaces and root
    filesystem exist and PID 1 waits. :meth:`call` forks this process, joins the container
    and calls the payload there; :meth:`discard` takes the container down."""

    def __init__(self, spec: ContainerSpec, helper: int, fd: int) -> None:
        self.spec = spec
        # H, which started C and waits for it: our child, or (0) the zygote's, whose end is
        # the end of ``fd``
        self._helper, self._fd = helper, fd
        self._init_pid = 0
        self._holder = 0  # C
        self._error: errors.SandboxError | None = None

    def _ready(self) -> int:
        """G's pid once the container is set up; raises the setup's error."""
        if not self._init_pid and self._error is None:
            data = b""
            while chunk := os.read(self._fd, 65536):
                data += chunk
                if data.endswith(b"\n"):
                    break
            if data[:1] == b"R":
                init_pid, holder = data[1:].split()
                self._init_pid, self._holder = int(init_pid), int(holder)
            elif data[:1] == b"E":
                self._error = _error_from(data[1:])
            else:
                self._error = errors.SandboxError("the container's helper died while starting it")
        if self._error is not None:
            raise self._error
        return self._init_pid

    def call(self, payload: Callable[[], bytes], *,
             timeout: float | None = None) -> tuple[int, bytes]:
        """As :func:`run_callable`, in this prepared container (once). Like
        :func:`run_callable`, the one fork a possibly threaded caller makes: J, the forked
        process, loads nothing and takes no lock the caller's threads may hold."""
        init_pid = self._ready()
        from sandbox._nsexec import join_container
        from sandbox.runtime.init import _docker_status, _run_payload

        sc.preload()  # once per process: not in J
        result_r, result_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # J: joins, then forks the body into the PID namespace and waits for it
            code = 125
            try:
                os.close(result_r)
                sc.set_pdeathsig(signal.SIGKILL)
                join_container(init_pid, 0)
                body = os.fork()
                if body == 0:
                    _run_payload(self.spec, payload, result_w)
                os.close(result_w)
                code = _docker_status(os.waitpid(body, 0)[1])
            finally:
                os._exit(code)
        os.close(result_w)
        return _collect(result_r, pid, (init_pid, pid), timeout)

    def upper(self) -> str:
        """Where this process sees the container's writable layer: its ``upper`` directory,
        or for a ``scratch`` layer that directory in C's mount namespace (while it lives)."""
        rootfs = self.spec.rootfs
        if not rootfs.scratch:
            return rootfs.upper
        self._ready()
        return rootfs.upper_seen_from_outside(self._holder)

    def discard(self) -> None:
        """Kill the container (its PID 1 takes the PID namespace down); the helper then ends
        once C has cleaned up (:meth:`reap`)."""
        try:
            init_pid = self._ready() if self._fd >= 0 else self._init_pid
        except errors.SandboxError:
            init_pid = 0
        if self._fd >= 0 and self._helper:
            os.close(self._fd)
            self._fd = -1
        if init_pid:
            _kill_quietly(init_pid)

    def reap(self, block: bool = True) -> bool:
        """Whether the helper (and so the container's mounts) is gone."""
        if not self._helper:
            if self._fd >= 0:  # the zygote's H: gone when its end of the pipe is
                ready, _, _ = select.select([self._fd], [], [], None if block else 0)
                while ready:
                    if not os.read(self._fd, 4096):
                        os.close(self._fd)
                        self._fd = -1
                        break
                    ready, _, _ = select.select([self._fd], [], [], None if block else 0)
            return self._fd < 0
        try:
            pid, _ = os.waitpid(self._helper, 0 if block else os.WNOHANG)
        except ChildProcessError:
            pid = self._helper
        if pid:
            self._helper = 0
        return not self._helper


def prepare_callable(spec: ContainerSpec, mapping: IdMapping) -> Prepared:
    """Start setting up a container for a later :meth:`Prepared.call` and return at once.

    A helper H does the caller's part of the start (C, its maps, its network) while this
    process goes on, then waits for C: a fork of the session's zygote (``sandbox._zygote``)
    where there is one, else of this (single-threaded) process. Only for callers that
    :func:`can_fork` or have a zygote.
    """
    from sandbox import _zygote

    zygote = _zygote.current()
    if zygote is not None:
        return Prepared(spec, 0, zygote.fork_reporting(
            "prepare", {"spec": spec_to_json(spec), "map_mode": mapping.mode}))
    sc.preload()
    r, w = os.pipe()
    helper = os.fork()
    if helper == 0:
        try:
            os.close(r)
            prepare_helper(spec, mapping, w)
        finally:
            os._exit(1)
    os.close(w)
    return Prepared(spec, helper, r)


def prepare_helper(spec: ContainerSpec, mapping: IdMapping, w: int) -> NoReturn:
    """H of :func:`prepare_callable`: start C (whose PID 1 then holds the container), write
    ``R<G's pid> <C's pid>`` or ``E<error>`` on ``w``, wait for C; ``w`` closes when H ends,
    once the container is gone."""
    from sandbox.runtime.init import container_main

    code = 1
    try:
        sc.set_pdeathsig(signal.SIGKILL)
        os.closerange(3, w)
        os.closerange(w + 1, 1 << 16)
        psock, csock = _sock.socketpair()
        pid = os.fork()
        if pid == 0:
            psock.close()
            os.close(w)
            container_main(spec, csock, _hold, -1)
        csock.close()
        started = Started(pid)
        try:
            _handshake(psock, started, mapping, spec.network)
        finally:
            psock.close()
        if started.error is not None:
            err = started.error
            import json

            os.write(w, b"E" + json.dumps({"kind": type(err).__name__, "code": err.exit_code,
                                           "message": err.one_line()}).encode() + b"\n")
        else:
            os.write(w, b"R%d %d\n" % (started.init_pid, pid))
        os.waitpid(pid, 0)
        stop_network(started)
        code = 0
    finally:
        os._exit(code)  # w closes with H: the caller's sign that the container is gone


def _collect(result_r: int, pid: int, kill: tuple[int, ...],
             timeout: float | None) -> tuple[int, bytes]:
    """Read a payload's bytes until EOF, then reap ``pid``: (its status, the bytes). On
    ``timeout`` ``kill`` get SIGKILL and the status is 137."""
    chunks: list[bytes] = []
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            wait_for = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([result_r], [], [], wait_for)
            if not ready:
                for target in kill:
                    if target:
                        _kill_quietly(target)
                os.waitpid(pid, 0)
                return 137, b""
            chunk = os.read(result_r, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(result_r)
    _, status = os.waitpid(pid, 0)
    code = 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.waitstatus_to_exitcode(
        status)
    return code, b"".join(chunks)


def run(spec: ContainerSpec, mapping: IdMapping) -> int:
    """Start, relay and wait: a foreground ``sandbox run``. Raises the setup error, if any."""
    forwarder = Forwarder()
    started = start(spec, mapping, forwarder)
    code = wait(started, proxy_tty=spec.tty, forwarder=forwarder)
    if started.error is not None:
        raise started.error
    return code
