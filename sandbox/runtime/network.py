"""User-mode networking for a container's own network namespace.

``--network slirp4netns[:OPTIONS]`` and ``--network pasta[:OPTIONS]`` as Podman spells them.
The caller (the ``sandbox run`` process or the container's monitor) starts the helper once the
container's PID 1 exists and before its command runs; the helper joins the container's user and
network namespaces, makes the interface, and is stopped when the container ends:

- slirp4netns: ``tap0`` 10.0.2.100/24, gateway 10.0.2.2, DNS 10.0.2.3; it reports readiness on a
  pipe and ends when its exit pipe closes (so also when we die).
- pasta: an interface with the host's own address and routes (``--config-net``); DNS through
  ``--dns-forward`` 169.254.1.1 when the host's resolver is on loopback. It reports readiness by
  writing its pid file (a FIFO here); it is our child with a parent-death signal, and we end it.

Neither reaches the host's loopback unless asked: slirp4netns ``allow_host_loopback=true``
(then 10.0.2.2 is the host's 127.0.0.1), pasta ``--map-gw`` (then the gateway is; Podman's
option, which drops the ``--no-map-gw`` we pass). Other pasta options are passed to it.
"""

from __future__ import annotations

import os

from sandbox import _sig as signal
from sandbox import errors

__all__ = ["MODES", "network_mode", "check_network", "start_network", "NetHelper",
           "resolv_conf", "PASTA_DNS"]

MODES = ("none", "host", "slirp4netns", "pasta")
PASTA_DNS = "169.254.1.1"
SLIRP_DNS = "10.0.2.3"
_SLIRP_OPTIONS = ("allow_host_loopback", "mtu")
_READY_TIMEOUT = 10.0


def network_mode(network: str) -> str:
    """``pasta:--map-gw`` → ``pasta``."""
    return network.partition(":")[0]


def _options(network: str) -> list[str]:
    rest = network.partition(":")[2]
    return [o for o in rest.split(",") if o] if rest else []


def check_network(network: str) -> None:
    """Raise a SpecError naming what is wrong with a ``--network`` value."""
    mode, opts = network_mode(network), _options(network)
    if mode not in MODES:
        raise errors.SpecError(f"network mode {mode!r} is not supported",
                               hint="use --network none, host, slirp4netns or pasta")
    if ":" in network and mode in ("none", "host"):
        raise errors.SpecError(f"network mode {mode!r} takes no options")
    if mode == "slirp4netns":
        for opt in opts:
            key, eq, value = opt.partition("=")
            if key not in _SLIRP_OPTIONS or not eq:
                raise errors.SpecError(f"unknown slirp4netns option {opt!r}",
                                       hint="use allow_host_loopback=true|false or mtu=N")
            if key == "allow_host_loopback" and value not in ("true", "false"):
                raise errors.SpecError(f"invalid slirp4netns option {opt!r}: use true or false")
            if key == "mtu" and not (value.isdigit() and 68 <= int(value) <= 65521):
                raise errors.SpecError(f"invalid slirp4netns option {opt!r}: "
                                       "the MTU is a number from 68 to 65521")


class NetHelper:
    """A running slirp4netns or pasta; ``stop`` ends it and reaps it."""

    __slots__ = ("pid", "exit_fd")

    def __init__(self, pid: int, exit_fd: int = -1) -> None:
        self.pid = pid
        self.exit_fd = exit_fd

    def stop(self) -> None:
        if self.exit_fd >= 0:
            os.close(self.exit_fd)  # slirp4netns ends when its exit pipe closes
            self.exit_fd = -1
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
        else:
            from sandbox._sig import kill_and_reap

            kill_and_reap(self.pid, signal.SIGTERM)


def start_network(network: str, init_pid: int) -> NetHelper | None:
    """Start the helper for a user-mode ``network`` of the container whose PID 1 is
    ``init_pid``; returns once its interface is configured (None for other modes)."""
    mode = network_mode(network)
    if mode == "slirp4netns":
        return _start_slirp4netns(init_pid, _options(network))
    if mode == "pasta":
        return _start_pasta(init_pid, _options(network))
    return None


def _tool(name: str, package: str) -> str:
    from sandbox.runtime.idmap import which

    path = which(name)
    if not path:
        raise errors.SandboxError(f"--network {name} needs {name}, which is not installed",
                                  hint=f"install it (Debian/Ubuntu: apt install {package})")
    return path


def _tun_hint() -> str:
    return "is /dev/net/tun usable by this user?"


def _start_slirp4netns(init_pid: int, opts: list[str]) -> NetHelper:
    tool = _tool("slirp4netns", "slirp4netns")
    settings = dict(o.partition("=")[::2] for o in opts)
    ready_r, ready_w = os.pipe()
    exit_r, exit_w = os.pipe()
    argv = [tool, "--configure", f"--mtu={settings.get('mtu', '65520')}",
            f"--ready-fd={ready_w}", f"--exit-fd={exit_r}",
            f"--userns-path=/proc/{init_pid}/ns/user", str(init_pid), "tap0"]
    if settings.get("allow_host_loopback") != "true":
        argv.insert(2, "--disable-host-loopback")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.set_inheritable(ready_w, True)
    os.set_inheritable(exit_r, True)
    try:
        pid = os.posix_spawn(tool, argv, os.environ, file_actions=[
            (os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, devnull, 1),
            (os.POSIX_SPAWN_DUP2, devnull, 2)])  # it narrates every fd it passes
    finally:
        for fd in (devnull, ready_w, exit_r):
            os.close(fd)
    ready = os.read(ready_r, 1)
    os.close(ready_r)
    if ready != b"1":
        os.close(exit_w)
        os.waitpid(pid, 0)
        raise errors.SandboxError("slirp4netns could not set up the container's network "
                                  f"({_tun_hint()})")
    return NetHelper(pid, exit_w)


def _start_pasta(init_pid: int, opts: list[str]) -> NetHelper:
    import tempfile

    tool = _tool("pasta", "passt")
    tmp = tempfile.mkdtemp(prefix="sandbox-pasta-")
    fifo, log = os.path.join(tmp, "ready"), os.path.join(tmp, "log")
    os.mkfifo(fifo, 0o600)
    # both ends ours until pasta writes its pid: no EOF before it opens the FIFO
    ready = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    hold = os.open(fifo, os.O_WRONLY | os.O_CLOEXEC)
    # --map-gw is Podman's option, not pasta's: it drops our --no-map-gw
    map_gw = "--map-gw" in opts
    argv = [tool, "--foreground", "--quiet", "--config-net", *([] if map_gw else ["--no-map-gw"]),
            "--dns-forward", PASTA_DNS, "-t", "none", "-u", "none", "-T", "none", "-U", "none",
            "--pid", fifo, *(o for o in opts if o != "--map-gw"), str(init_pid)]
    try:
        pid = _spawn_with_parent_death(tool, argv, log)
        err = _await_ready(pid, ready)
    finally:
        os.close(ready)
        os.close(hold)
    try:
        if err is not None:
            with open(log, errors="replace") as f:
                said = next((line.strip() for line in f if line.strip()
                             and not line.startswith("Failed to send")), "")
            raise errors.SandboxError("pasta could not set up the container's network: "
                                      f"{said or err}", hint=None if said else _tun_hint())
    finally:
        for name in ("ready", "log"):
            try:
                os.unlink(os.path.join(tmp, name))
            except FileNotFoundError:
                pass
        os.rmdir(tmp)
    return NetHelper(pid)


def _spawn_with_parent_death(tool: str, argv: list[str], log: str) -> int:
    """Our child running ``argv``, killed if we die (a forked child sets PR_SET_PDEATHSIG
    before exec; where this process has threads, posix_spawn, and only ``stop`` ends it)."""
    from sandbox.runtime.process import has_threads

    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        if has_threads():
            return os.posix_spawn(tool, argv, os.environ, setsigdef=(signal.SIGPIPE,),
                                  file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 0),
                                                (os.POSIX_SPAWN_DUP2, devnull, 1),
                                                (os.POSIX_SPAWN_DUP2, out, 2)])
        pid = os.fork()
        if pid == 0:
            try:
                from sandbox import _syscalls as sc

                sc.set_pdeathsig(signal.SIGKILL)
                signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # pasta refuses an ignored one
                os.dup2(devnull, 0)
                os.dup2(devnull, 1)
                os.dup2(out, 2)
                os.execv(tool, argv)
            finally:
                os._exit(127)
        return pid
    finally:
        os.close(out)
        os.close(devnull)


def _await_ready(pid: int, ready: int) -> str | None:
    """None once the helper has written its pid file, else why it did not."""
    import select

    pidfd = os.pidfd_open(pid)
    try:
        poller = select.poll()
        poller.register(ready, select.POLLIN)
        poller.register(pidfd, select.POLLIN)
        events = poller.poll(int(_READY_TIMEOUT * 1000))
    finally:
        os.close(pidfd)
    if any(fd == ready for fd, _ in events):
        return None
    if not events:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if not events:
        return f"no answer in {_READY_TIMEOUT:.0f}s"
    return f"it exited with status {os.waitstatus_to_exitcode(status)}"


def resolv_conf(network: str, host_resolv: str) -> str:
    """The container's resolv.conf for ``network`` (before ``--dns``/``--dns-search``)."""
    mode = network_mode(network)
    if mode == "slirp4netns":
        return f"nameserver {SLIRP_DNS}\n"
    if mode == "host":
        return host_resolv
    if mode != "pasta":
        return ""
    out: list[str] = []
    for line in host_resolv.splitlines():
        words = line.split()
        if words[:1] == ["nameserver"] and len(words) > 1:
            addr = words[1]
            if addr.startswith("127.") or addr == "::1":
                addr = PASTA_DNS  # the host's loopback resolver, through pasta's DNS mapping
            line = f"nameserver {addr}"
            if line in out:
                continue
        out.append(line)
    return "\n".join(out) + "\n" if out else ""
