"""The per-container monitor of a detached container (Podman's conmon, in Python).

``launch`` starts it: a single-threaded caller (the CLI) forks it, any other spawns
``python -m sandbox._monitor ROOT ID FD MAPMODE`` (DESIGN decision 1); either way the monitor
double-forks into its own session, so killing the caller never kills the container. The monitor:

1. binds the published host ports (a busy port fails the start, as Docker's does);
2. starts the container with its stdio on pipes (or a pty with ``-t``) through
   ``sandbox.runtime.process.start`` (it is single-threaded, so that forks: cheap);
3. writes ``state.json`` (pids with start times) and one JSON line on the status pipe;
4. runs one event loop: container output → json-file log and attached clients, attach
   input → the container, published ports ↔ the container's network namespace
   (``sandbox._ports``), the container's exit through a pidfd;
5. records the exit status and time, restarts per ``--restart``, removes ``--rm`` containers.

If the monitor is SIGKILLed, the container's holder process gets its parent-death signal and
takes the container down; ``lifecycle.cleanup_stale`` then finds the dead monitor by its
(pid, start time) and records the truth.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import socket
import struct
import sys
import time
from typing import Any, NoReturn

from sandbox import _cstate as cs
from sandbox._record import replace as record_replace

__all__ = ["Launch", "launch", "launch_async", "monitor_main", "attach_socket_path"]

logger = logging.getLogger(__name__)

# A single-threaded caller (the CLI, a pytest run without threads) forks itself into the
# monitor; a caller with threads, as the kernel counts them, starts a fresh interpreter
# (DESIGN decision 1, STYLE 3: ``runtime.process.can_fork``).


def attach_socket_path(cdir: str) -> str:
    return os.path.join(cdir, "attach.sock")


# -- launching --------------------------------------------------------------------------------

def launch(root: str, cid: str, map_mode: str) -> dict[str, Any]:
    """Start the monitor of container ``cid``; returns its report once the command runs."""
    return launch_async(root, cid, map_mode).report()


class Launch:
    """A monitor on its way: :meth:`report` waits until the container's command runs (or the
    start failed) and returns the monitor's report. The caller goes on meanwhile; the plugin
    starts the next test's container this way while the current test runs."""

    def __init__(self, pid: int, fd: int) -> None:
        self._pid, self._fd = pid, fd
        self._report: dict[str, Any] | None = None

    def report(self) -> dict[str, Any]:
        if self._report is not None:
            return self._report
        try:
            if self._pid:  # 0: the zygote forked it, and reaps it
                os.waitpid(self._pid, 0)
        except ChildProcessError:
            pass
        data = b""
        try:
            while not data.endswith(b"\n"):
                chunk = os.read(self._fd, 65536)
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(self._fd)
        try:
            report: dict[str, Any] = json.loads(data)
        except ValueError:
            report = {"error": {"kind": "SandboxError", "code": 125,
                                "message": "the container monitor died while starting"}}
        self._report = report
        return report


def launch_async(root: str, cid: str, map_mode: str) -> Launch:
    """Fork (or spawn, from a threaded caller) the monitor of ``cid`` and return at once;
    where this process has a zygote (``sandbox._zygote``), the zygote forks it."""
    from sandbox import _zygote
    from sandbox.runtime.process import can_fork

    zygote = _zygote.current()
    if zygote is not None:
        return Launch(0, zygote.fork_reporting(
            "monitor", {"root": root, "cid": cid, "map_mode": map_mode}))
    r, w = os.pipe()
    if can_fork():
        from sandbox import _logs  # noqa: F401 - every monitor needs it: imported once here
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                os.setsid()
                if os.fork() == 0:
                    monitor_main(root, cid, w, map_mode)
            finally:
                os._exit(0)
    else:
        os.set_inheritable(w, True)
        env = dict(os.environ)
        pid = os.posix_spawn(sys.executable, [sys.executable, "-m", "sandbox._monitor", root,
                                              cid, str(w), map_mode], env)
    os.close(w)
    return Launch(pid, r)


def _daemonize_stdio(keep: int) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)
    os.closerange(3, keep)
    os.closerange(keep + 1, 1 << 16)


def monitor_main(root: str, cid: str, status_fd: int, map_mode: str) -> NoReturn:
    """The monitor process; never returns."""
    _daemonize_stdio(status_fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    mon = None
    try:
        mon = Monitor(root, cid, status_fd, map_mode)
        mon.run()
    except BaseException as exc:  # noqa: BLE001 - reported to the caller, logged
        _log_crash(root, cid, exc)
        if mon is None or not mon.reported:
            _report(status_fd, {"error": _error_payload(exc)})
    os._exit(0)


def _error_payload(exc: BaseException) -> dict[str, Any]:
    from sandbox.errors import SandboxError

    if isinstance(exc, SandboxError):
        return {"kind": type(exc).__name__, "message": exc.one_line(), "code": exc.exit_code}
    return {"kind": "SandboxError", "message": f"container monitor: {exc}", "code": 125}


def _report(fd: int, payload: dict[str, Any]) -> None:
    try:
        os.write(fd, json.dumps(payload).encode() + b"\n")
        os.close(fd)
    except OSError:
        pass


def _log_crash(root: str, cid: str, exc: BaseException) -> None:
    import traceback

    try:
        with open(os.path.join(root, "containers", cid, "monitor.log"), "a") as f:
            f.write(f"{cs.rfc3339()} monitor failed:\n")
            traceback.print_exception(exc, file=f)
    except OSError:
        pass


# -- the monitor ------------------------------------------------------------------------------

class Monitor:
    def __init__(self, root: str, cid: str, status_fd: int, map_mode: str) -> None:
        from sandbox.containers import Engine
        from sandbox.runtime.idmap import detect_mapping
        from sandbox.store import Store

        self.engine = Engine(Store(root), mapping=detect_mapping(force_single=map_mode == "single"))
        self.cid = cid
        self.cdir = self.engine.store.container_dir(cid)
        self.status_fd = status_fd
        self.reported = False
        self.sel = selectors.DefaultSelector()
        self.attach: AttachServer | None = None
        self.forwarder: Any = None
        self.log: Any = None
        self.in_w = -1
        self.in_sock: socket.socket | None = None
        self.master = -1
        self.open_streams = 0
        self.hostconfig: dict[str, Any] = {}
        self.cgroup = ""  # this run's cgroup v2, where delegated (sandbox._cgroups)
        self.run_state: dict[str, Any] = {}  # as the current run was recorded

    def run(self) -> None:
        from sandbox.spec import spec_from_json

        cfg = self.engine.load_config(self.cid)
        spec = spec_from_json(json.dumps(cfg["spec"]))
        hc = cs.read_hostconfig(self.cdir)
        self.hostconfig = hc
        _apply_ulimits(hc.get("ulimits") or [])
        from sandbox._logs import DEFAULT_MAX_FILE, DEFAULT_MAX_SIZE, LogWriter

        self.log = LogWriter(os.path.join(self.cdir, "log.json"),
                             max_size=int(hc.get("log_max_size") or DEFAULT_MAX_SIZE),
                             max_file=int(hc.get("log_max_file") or DEFAULT_MAX_FILE))
        listeners: list[Any] = []
        if hc.get("ports"):  # the forwarder's module costs 5 ms to import: only with -p
            from sandbox._ports import bind_listeners

            listeners = bind_listeners(list(hc["ports"]))
        ports: dict[str, list[list[Any]]] = {}
        for _, b in listeners:
            ports.setdefault(f"{b['container_port']}/{b['proto']}", []).append(
                [b["host_ip"], b["host_port"]])
        self.attach = AttachServer(self, self.cdir)
        restarts = int(cs.read_state(self.cdir).get("restart_count", 0))
        first = True
        while True:
            started = self._launch(spec, listeners, ports, restarts, first)
            if started is None:
                self._close_ports()  # stopped or removed while we waited to restart it
                break
            if started.error is not None:
                self._drop_cgroup()
                self._record_exit(started.error.exit_code, error=started.error.one_line())
                if not self.reported:
                    self._send({"error": _error_payload(started.error)})
                break
            if not self.reported:
                self._send({"ok": True, **{k: self.run_state[k]
                                           for k in ("pid", "init_pid", "started_at")}})
            code = self._loop(started)
            from sandbox.runtime.process import stop_network

            stop_network(started)  # this run's slirp4netns or pasta: a restart makes its own
            self._drop_cgroup()
            again = _should_restart(hc.get("restart") or "no", code, restarts, self.cdir)
            if not again:
                self._close_ports()  # before the exit is recorded: `stop` returns after it
            self._record_exit(code, restarting=again)
            if not again:
                break
            restarts += 1
            first = False
            self._back_off(restarts)
        self._finish(spec, hc)

    def _launch(self, spec: Any, listeners: list[Any], ports: dict[str, Any], restarts: int,
                first: bool) -> Any:
        """Start a run and record it as running; None: stopped or removed before a restart.

        The state lock is held from the last look at ``manual_stop`` until the run is recorded
        as running. ``lifecycle.stop`` sets the flag under the same lock and then reads the
        state, so it either comes first (and no run starts) or finds this run recorded, with
        its pids, and stops it: no run can slip in after ``stop`` has looked.
        """
        if not first and not os.path.isdir(self.cdir):
            return None
        with cs.state_lock(self.cdir):
            if not first and cs.read_state(self.cdir).get("manual_stop"):
                cs.update_state(self.cdir, restarting=False)
                return None
            started = self._start(spec)
            if started.error is None:
                if listeners:
                    self._start_forwarder(started.init_pid, listeners)
                self.run_state = self._running(started, ports, restarts)
        return started

    def _back_off(self, restarts: int) -> None:
        """Docker's growing delay before a restart, cut short by a ``stop`` or an ``rm``."""
        deadline = time.monotonic() + min(0.1 * (2 ** min(restarts, 6)), 5.0)
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))
            if not os.path.isdir(self.cdir) or cs.read_state(self.cdir).get("manual_stop"):
                return

    # -- start ----------------------------------------------------------------------------
    def _start(self, spec: Any) -> Any:
        from sandbox.runtime.process import start

        if self.attach is not None:
            self.attach.new_run()
        rt_spec = record_replace(spec, remove=False)
        # sockets, not pipes: a command that splices/sendfiles a socket into a stdout *pipe*
        # (busybox cat does) sleeps holding the pipe's mutex, and our read would wait on it
        out_r, out_w = _stream_pair()
        err_r, err_w = _stream_pair()
        if spec.interactive and not spec.tty:
            # a socket, not a pipe: shutdown() reaches EOF to the command even though the
            # container's holder process (forked, not exec'd) holds a copy of our end
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            self.in_sock = ours
            self.in_w = ours.fileno()
            in_r = os.dup(theirs.fileno())
            theirs.close()
        else:
            in_r = os.open(os.devnull, os.O_RDONLY)
        os.dup2(in_r, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        try:
            from sandbox import _cgroups

            self.cgroup = _cgroups.for_container(self.cid, self.hostconfig)
            started = start(rt_spec, self.engine.mapping, cgroup=self.cgroup)
        except BaseException:
            self._drop_cgroup()
            raise
        finally:
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            for fd in (null, out_w, err_w, in_r):
                os.close(fd)
        self.open_streams = 0
        for fd, stream in ((out_r, "stdout"), (err_r, "stderr")):
            os.set_blocking(fd, False)  # never block the loop on a spurious wake-up
            self.sel.register(fd, selectors.EVENT_READ, self._reader(fd, stream))
            self.open_streams += 1
        if started.master_fd >= 0:
            self.master = started.master_fd
            os.set_blocking(self.master, False)
            self.sel.register(self.master, selectors.EVENT_READ,
                              self._reader(self.master, "stdout"))
            self.open_streams += 1
        return started

    def _drop_cgroup(self) -> None:
        if self.cgroup:
            from sandbox import _cgroups

            _cgroups.remove(self.cgroup)
            self.cgroup = ""

    def _running(self, started: Any, ports: dict[str, Any], restarts: int) -> dict[str, Any]:
        kids = cs.children_of(started.init_pid)
        for _ in range(20):
            if kids:
                break
            time.sleep(0.001)
            kids = cs.children_of(started.init_pid)
        main = kids[0] if kids else 0
        return self._running_state(started, ports, restarts, main, os.getpid())

    def _running_state(self, started: Any, ports: dict[str, Any], restarts: int, main: int,
                       me: int) -> dict[str, Any]:
        """Record the run; the caller holds the state lock (``_launch``)."""
        state = cs.read_state(self.cdir)
        state.update(status="running", pid=main, pid_start=cs.proc_start_time(main),
                     init_pid=started.init_pid,
                     init_start=cs.proc_start_time(started.init_pid), cpid=started.pid,
                     monitor_pid=me, monitor_start=cs.proc_start_time(me),
                     started_at=cs.rfc3339(), finished_at="0001-01-01T00:00:00Z",
                     exit_code=0, error="", ports=ports, restart_count=restarts,
                     manual_stop=False, restarting=False, foreground=False, time=time.time(),
                     cgroup=self.cgroup)
        cs.write_state(self.cdir, state)
        return state

    def _send(self, payload: dict[str, Any]) -> None:
        _report(self.status_fd, payload)
        self.reported = True

    def _start_forwarder(self, init_pid: int, listeners: list[Any]) -> None:
        """The socket factory joins this run's namespaces; the listeners stay across runs."""
        from sandbox._ports import Forwarder, SocketFactory

        factory = SocketFactory(init_pid)
        if self.forwarder is None:
            self.forwarder = Forwarder(self.sel, factory, listeners)
        else:
            self.forwarder.factory.close()
            self.forwarder.factory = factory

    def _close_ports(self) -> None:
        if self.forwarder is not None:
            self.forwarder.factory.close()
            self.forwarder.close()
            self.forwarder = None

    # -- event loop -----------------------------------------------------------------------
    def _reader(self, fd: int, stream: str) -> Any:
        def read(_mask: int) -> None:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.sel.unregister(fd)
                if fd != self.master:
                    os.close(fd)
                self.open_streams -= 1
                return
            self.log.write(stream, data)
            if self.attach is not None:
                self.attach.broadcast(1 if stream == "stdout" else 2, data)
        return read

    def _loop(self, started: Any) -> int:
        pidfd = os.pidfd_open(started.pid)
        code: list[int] = []

        def exited(_mask: int) -> None:
            self.sel.unregister(pidfd)
            os.close(pidfd)
            _, status = os.waitpid(started.pid, 0)
            code.append(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status)
                        else os.waitstatus_to_exitcode(status))

        self.sel.register(pidfd, selectors.EVENT_READ, exited)
        deadline = None
        orphaned = False
        while True:
            if code:
                if self.open_streams <= 0:
                    break
                deadline = deadline or time.monotonic() + 2.0
                if time.monotonic() > deadline:
                    break
            events = self.sel.select(0.5 if not code else 0.05)
            for key, mask in events:
                key.data(mask)
            if not events and not code and not orphaned and not os.path.isdir(self.cdir):
                # the container's directory went (its store deleted under it, as pytest's
                # basetemp rotation does): nothing can reach this container any more, so it
                # must not run on forever
                orphaned = True
                try:
                    os.kill(started.pid, signal.SIGKILL)  # C: PID 1 and all with it
                except ProcessLookupError:
                    pass
        self._close_streams()
        return code[0]

    def _close_streams(self) -> None:
        for key in list(self.sel.get_map().values()):
            data = key.data
            if getattr(data, "__name__", "") == "read":
                self.sel.unregister(key.fileobj)
                if key.fd != self.master:
                    os.close(key.fd)
        if self.master >= 0:
            os.close(self.master)
            self.master = -1
        self.stdin_close()
        self.log.flush()

    # -- input from attached clients ------------------------------------------------------
    def stdin_write(self, data: bytes) -> None:
        fd = self.master if self.master >= 0 else self.in_w
        if fd < 0:
            return
        try:
            os.write(fd, data)
        except OSError:
            pass

    def stdin_close(self) -> None:
        if self.in_sock is not None:
            try:
                self.in_sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self.in_sock.close()
            self.in_sock = None
            self.in_w = -1

    def resize(self, rows: int, cols: int) -> None:
        if self.master < 0:
            return
        import fcntl
        import termios

        try:
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        except OSError:
            pass

    # -- exit -----------------------------------------------------------------------------
    def _record_exit(self, code: int, *, error: str = "", restarting: bool = False) -> None:
        """``restarting``: the monitor will start the container again after its back-off."""
        try:
            with cs.state_lock(self.cdir):
                cs.update_state(self.cdir, status="exited", exit_code=code,
                                finished_at=cs.rfc3339(), pid=0, pid_start=0, init_pid=0,
                                init_start=0, cpid=0, error=error, time=time.time(),
                                cgroup="", restarting=restarting)
        except OSError:
            pass  # removed under us (rm -f)

    def _finish(self, spec: Any, hc: dict[str, Any]) -> None:
        self._close_ports()
        if self.attach is not None:
            self.attach.close()
        self.log.close()
        if spec.remove and os.path.isdir(self.cdir):
            from sandbox import volumes

            state = cs.read_state(self.cdir)
            try:
                with open(self.cdir + cs.EXIT_SUFFIX, "w") as f:
                    json.dump({"exit_code": state.get("exit_code", 0)}, f)
            except OSError:
                pass
            anon = [v["name"] for v in hc.get("volumes", []) if v.get("anonymous")]
            from sandbox._control import remove_container_dir

            remove_container_dir(self.engine, self.cid)
            volumes.remove_volumes(self.engine, anon)


def _stream_pair() -> tuple[int, int]:
    """(our read end, the container's write end), one-way like a pipe."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.shutdown(socket.SHUT_WR)
    theirs.shutdown(socket.SHUT_RD)
    return ours.detach(), theirs.detach()


def _apply_ulimits(ulimits: list[dict[str, Any]]) -> None:
    import resource

    for u in ulimits:
        res = getattr(resource, "RLIMIT_" + str(u["name"]).upper(), None)
        if res is None:
            continue
        try:
            resource.setrlimit(res, (int(u["soft"]), int(u["hard"])))
        except (ValueError, OSError) as exc:
            logger.warning("ulimit %s not applied: %s", u["name"], exc)


def _should_restart(policy: str, code: int, restarts: int, cdir: str) -> bool:
    name, _, limit = policy.partition(":")
    if name == "no" or not os.path.isdir(cdir):
        return False
    if cs.read_state(cdir).get("manual_stop"):
        return False
    if name == "on-failure":
        return code != 0 and (not limit or restarts < int(limit))
    return name in ("always", "unless-stopped")


# -- attach -----------------------------------------------------------------------------------

class AttachServer:
    """``attach.sock``: frames ``<stream:1><len:4>data`` out, raw stdin in.

    Client → server control: a first line ``{"stdin": bool, "rows": R, "cols": C, "replay":
    bool}``; later bytes are the container's input (``\\x00R`` + 4 bytes rows/cols is a resize).
    The server answers the first line with an empty frame of stream 0 (attached), then the
    output of the current run so far when ``replay`` is asked (``start -a -i`` and a monitored
    foreground ``run`` attach just after the start: nothing the command printed first is lost),
    then the output as it comes.
    """

    BACKLOG_MAX = 1 << 20

    def __init__(self, mon: Monitor, cdir: str) -> None:
        self.mon = mon
        self.clients: dict[int, _Client] = {}
        self.backlog: list[bytes] = []
        self.backlog_size = 0
        self.dir_fd = os.open(cdir, os.O_PATH | os.O_CLOEXEC)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = f"/proc/self/fd/{self.dir_fd}/attach.sock"
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self.sock.bind(path)
        self.sock.listen(8)
        self.sock.setblocking(False)
        mon.sel.register(self.sock, selectors.EVENT_READ, self._accept)

    def _accept(self, _mask: int) -> None:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        if uid != os.getuid():
            conn.close()
            return
        conn.setblocking(False)
        client = _Client(conn)
        self.clients[conn.fileno()] = client
        self.mon.sel.register(conn, selectors.EVENT_READ, lambda m, c=client: self._input(c))

    def _input(self, c: _Client) -> None:
        try:
            data = c.conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if c.wants_stdin:
                self.mon.stdin_close()
            try:
                self.mon.sel.unregister(c.conn)  # half-closed: output still goes to it
            except (KeyError, ValueError):
                pass
            return
        c.inbuf += data
        if not c.hello:
            nl = c.inbuf.find(b"\n")
            if nl < 0:
                return
            try:
                hello = json.loads(c.inbuf[:nl])
            except ValueError:
                hello = {}
            c.wants_stdin = bool(hello.get("stdin"))
            if hello.get("rows"):
                self.mon.resize(int(hello["rows"]), int(hello["cols"]))
            frames = [struct.pack(">BI", 0, 0)]
            if hello.get("replay"):
                frames += self.backlog
            if not self._send(c, b"".join(frames)):
                return
            c.hello = True
            c.inbuf = c.inbuf[nl + 1:]
        if c.wants_stdin and c.inbuf:
            self.mon.stdin_write(bytes(c.inbuf))
        c.inbuf = bytearray()

    def new_run(self) -> None:
        self.backlog, self.backlog_size = [], 0

    def broadcast(self, stream: int, data: bytes) -> None:
        frame = struct.pack(">BI", stream, len(data)) + data
        if self.backlog_size < self.BACKLOG_MAX:
            self.backlog.append(frame)
            self.backlog_size += len(frame)
        for c in list(self.clients.values()):
            if c.hello:
                self._send(c, frame)

    def _send(self, c: _Client, data: bytes) -> bool:
        try:
            c.conn.setblocking(True)
            c.conn.settimeout(1.0)
            c.conn.sendall(data)
            c.conn.setblocking(False)
            return True
        except OSError:
            self._drop(c)
            return False

    def _drop(self, c: _Client) -> None:
        self.clients.pop(c.conn.fileno(), None)
        try:
            self.mon.sel.unregister(c.conn)
        except (KeyError, ValueError):
            pass
        c.conn.close()

    def close(self) -> None:
        for c in list(self.clients.values()):
            self._drop(c)
        try:
            self.mon.sel.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()
        try:
            os.unlink(f"/proc/self/fd/{self.dir_fd}/attach.sock")
        except OSError:
            pass
        os.close(self.dir_fd)


class _Client:
    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.hello = False
        self.wants_stdin = False
        self.inbuf = bytearray()


def main() -> NoReturn:
    root, cid, fd, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if os.fork() != 0:
        os._exit(0)
    os.setsid()
    monitor_main(root, cid, fd, mode)


if __name__ == "__main__":
    main()
