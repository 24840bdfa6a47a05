"""The namespace half of a container: the helper, the plan executor and PID 1.

Process tree of one container (P is the caller: a monitor, the pytest plugin's helpers, or a
helper for threaded callers)::

    P ──fork/spawn──> C  unshare(user) · P writes maps · unshare(pid, uts, ipc, net, cgroup)
                      │  waits for G, cleans up (while G exits), exits with G's status
                      └─fork─> G  PID 1: unshare(mount), executes the plan, pivot_root,
                               │  becomes the command's user (caps, no_new_privs), forwards
                               │  signals, reaps zombies, exits with W's status
                               └─posix_spawn─> W  the command

``python -m sandbox.runtime.init FD`` runs C in a fresh single-threaded interpreter, with the
spec JSON and the control socket inherited on fd ``FD`` (runc re-executing itself as
``runc init``). A single-threaded caller forks and calls ``container_main`` directly.

The CLI's foreground ``run`` has no C (``process.start(inline=True)``): the CLI enters the user
namespace itself (``userns.enter_user_namespace``), makes the PID namespace and forks G, which
makes the others (``init_main(namespaces=...)``); the CLI removes an ``--rm`` container while G
exits. Only the control socket's G→P messages are used then.

Messages on the control socket (SOCK_SEQPACKET): C→P ``U`` (user ns made, write my maps),
P→C ``M`` (maps written) or ``X`` (abort), C→P ``G<pid>`` (host pid of PID 1), G→P ``T`` with
the pty master as SCM_RIGHTS, any→P ``E<json>`` (a setup error to report). P sees EOF when the
command has been exec'd (the socket is close-on-exec) or everything died.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import sys

from sandbox import _json as json
from sandbox import _sig as signal
from sandbox import _sock
from sandbox import _syscalls as sc
from sandbox._paths import resolve_in_root
from sandbox.runtime.plan import MountOp, build_plan
from sandbox.spec import ContainerSpec, RootfsSpec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

    Payload = Callable[[], bytes]

__all__ = ["container_main", "init_main", "execute_plan", "namespace_flags",
           "FORWARDED_SIGNALS", "main"]

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)

_CAPS = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3,
    "CAP_FSETID": 4, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_IPC_LOCK": 14, "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_CHROOT": 18, "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20, "CAP_SYS_ADMIN": 21, "CAP_SYS_BOOT": 22, "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24, "CAP_SYS_TIME": 25, "CAP_SYS_TTY_CONFIG": 26, "CAP_MKNOD": 27,
    "CAP_LEASE": 28, "CAP_AUDIT_WRITE": 29, "CAP_AUDIT_CONTROL": 30, "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32, "CAP_MAC_ADMIN": 33, "CAP_SYSLOG": 34, "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36, "CAP_AUDIT_READ": 37, "CAP_PERFMON": 38, "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}

# statvfs f_flag bits → mount flags that a bind remount must keep (locked in a user namespace).
_ST_TO_MS = ((1, sc.MS_RDONLY), (2, sc.MS_NOSUID), (4, sc.MS_NODEV), (8, sc.MS_NOEXEC),
             (1024, 1024), (2048, 2048), (4096, sc.MS_RELATIME))


class Forwarder:
    """Forwards our signals to one process; signals that arrive before it exists wait.

    Installed before the fork that creates the target, so no signal is lost in between (a
    signal to ``sandbox run`` right after the command printed its first line must arrive).
    """

    def __init__(self, signals: tuple[int, ...] = FORWARDED_SIGNALS) -> None:
        self.target = 0
        self.pending: list[int] = []
        self.on_parent_death = 0  # when set: SIGTERM with a dead parent becomes this signal
        self.parent = os.getppid()
        self.previous = {sig: signal.signal(sig, self._handle) for sig in signals}

    def _handle(self, signum: int, _frame: object) -> None:
        if self.on_parent_death and signum == signal.SIGTERM and os.getppid() != self.parent:
            signum = self.on_parent_death
        if not self.target:
            self.pending.append(signum)
            return
        try:
            os.kill(self.target, signum)
        except ProcessLookupError:
            pass

    def set_target(self, pid: int) -> None:
        self.target = pid
        pending, self.pending = self.pending, []
        for signum in pending:
            self._handle(signum, None)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class SetupFailed(Exception):
    """A setup step failed; carries what to report to the caller."""

    def __init__(self, kind: str, message: str, code: int = 125) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.code = code


def _send(sock: _sock.Socket, data: bytes) -> None:
    try:
        sock.send(data)
    except OSError:
        pass


def report(sock: _sock.Socket, kind: str, message: str, code: int) -> None:
    _send(sock, b"E" + json.dumps({"kind": kind, "message": message, "code": code}).encode())


# -- plan execution ---------------------------------------------------------------------------

class _InRoot:
    """``resolve_in_root`` for one plan's targets, remembering the directories resolved: most
    targets share a parent (``/dev/*``, ``/proc/*``), so each step reads one link, not one per
    component. A step that mounts or makes something at a path forgets what lies at or below
    it (a mount hides what was resolved there).

    Nor is the last component read where the image cannot have put a link: in a filesystem
    this plan mounted (``proc``, ``sysfs``, a ``tmpfs``: the kernel's, or empty) and not bound
    over since, unless this plan made a link there itself. That is most steps (the masks, the
    read-only paths, ``/dev``)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.dirs: dict[str, str] = {}
        # in-root mount point -> (its host path, whether a tmpfs, empty when mounted) where
        # the filesystem there is a fresh one; None where it is a bind
        self.mounted: dict[str, tuple[str, bool] | None] = {}
        self.links: set[str] = set()  # in-root links this plan made
        self.made: set[str] = set()  # what the plan made in its tmpfs mounts

    def _plain(self, target: str) -> bool:
        """Not a link the plan made, nor a path with ``..`` and the like (resolved the long
        way)."""
        return target not in self.links and "/." not in target and "//" not in target

    def new_in_empty(self, target: str) -> bool:
        """Whether ``target`` is in a tmpfs this plan mounted and not made there yet: a step
        makes it first, without trying it (where the mount would fail with ENOENT). It
        counts as made from here on."""
        fresh = self.mounted.get(target.rpartition("/")[0])
        if fresh is None or not fresh[1] or target in self.made or not self._plain(target):
            return False
        self.made.add(target)
        return True

    def _fresh(self, target: str) -> str | None:
        """The host path of ``target`` where it lies in a filesystem this plan mounted (and
        not in a link the plan made), else None."""
        if not self._plain(target):
            return None
        best, fresh = "", None
        for point, at in self.mounted.items():
            if len(point) >= len(best) and (target == point or target.startswith(point + "/")):
                best, fresh = point, at
        return None if fresh is None else fresh[0] + target[len(best):]

    def path(self, op: MountOp, *, follow_last: bool = True) -> str:
        if not op.in_root:
            return op.target
        parent, _, name = op.target.rpartition("/")
        if name in ("", ".", ".."):
            return resolve_in_root(self.root, op.target, follow_last=follow_last)
        base = self.dirs.get(parent)
        if base is None:
            base = self._fresh(parent) or resolve_in_root(self.root, parent or "/")
            self.dirs[parent] = base
        host = os.path.join(base, name)
        if follow_last and self._fresh(op.target) is None:
            try:
                os.readlink(host)
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.ENOENT, errno.ENOTDIR):
                    return host
                raise
            return resolve_in_root(self.root, op.target)  # the last component is a link
        return host

    def changed(self, op: MountOp, host: str = "") -> None:
        """After ``op``, which acted at ``host`` (its target's host path)."""
        if not op.in_root:
            return
        if self.dirs:
            below = op.target.rstrip("/") + "/"
            for key in [k for k in self.dirs if k == op.target or k.startswith(below)]:
                del self.dirs[key]
        if op.kind in ("mount", "bind"):
            point = op.target.rstrip("/")
            for hidden in [p for p in self.mounted if p.startswith(point + "/")]:
                del self.mounted[hidden]  # under what was just mounted over them
            fresh = op.kind == "mount" and host
            self.mounted[point] = (host, op.fstype == "tmpfs") if fresh else None
        elif op.kind == "symlink":
            self.links.add(op.target)


def _current_flags(path: str) -> int:
    flags = 0
    st = os.statvfs(path).f_flag
    for st_bit, ms_bit in _ST_TO_MS:
        if st & st_bit:
            flags |= ms_bit
    return flags


def _remount_ro(path: str) -> None:
    flags = _current_flags(path) | sc.MS_RDONLY
    sc.mount(None, path, None, sc.MS_REMOUNT | sc.MS_BIND | flags)


def _mkdirs(path: str) -> None:
    """``os.makedirs(path, exist_ok=True)`` in one syscall where the parent exists (its usual
    case here: a mount point of the init layer, the image or a tmpfs this plan made)."""
    try:
        os.mkdir(path)
    except FileExistsError:
        pass  # a file there fails the mount that follows, with ENOTDIR
    except FileNotFoundError:
        os.makedirs(path, exist_ok=True)


def _touch(path: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    os.close(fd)


def _mount_made(source: str | None, target: str, fstype: str | None, flags: int,
                data: str | None, make: Callable[[str], None], new: bool = False) -> None:
    """mount(2), making the missing target with ``make`` first. Most targets exist, so the
    mount is tried first: a step is then one syscall, not five. ``new``: the target is known
    not to exist yet (``_InRoot.new_in_empty``), so it is made without trying."""
    if new:
        make(target)
    else:
        try:
            sc.mount(source, target, fstype, flags, data)
            return
        except FileNotFoundError:
            make(target)
    sc.mount(source, target, fstype, flags, data)


def _bind(op: MountOp, target: str, new: bool = False) -> None:
    def make(path: str) -> None:
        if os.path.isdir(op.source) and not os.path.islink(op.source):
            _mkdirs(path)
        elif new or not os.path.lexists(path):  # a dangling link stays (and fails as it did)
            _touch(path)

    _mount_made(op.source, target, None, sc.MS_BIND | (op.flags & sc.MS_REC), None, make, new)


def _mask(target: str) -> None:
    try:
        mode = os.stat(target).st_mode
    except OSError:
        return  # not on this kernel
    if stat.S_ISDIR(mode):
        sc.mount("tmpfs", target, "tmpfs", sc.MS_RDONLY, "size=0")
    else:
        sc.mount("/dev/null", target, None, sc.MS_BIND)


def _pivot_root(root: str) -> None:
    os.chdir(root)
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")


def _do(op: MountOp, paths: _InRoot, join_net: Callable[[], None] | None) -> None:
    kind = op.kind
    if kind == "mount":
        target = paths.path(op)
        _mount_made(op.source, target, op.fstype, op.flags, op.data or None, _mkdirs,
                    paths.new_in_empty(op.target))
        paths.changed(op, target)
        return
    if kind == "bind":
        _bind(op, paths.path(op), paths.new_in_empty(op.target))
    elif kind == "mask":
        _mask(paths.path(op))
    elif kind == "symlink":
        try:
            os.symlink(op.source, paths.path(op, follow_last=False))
        except FileExistsError:
            pass
    elif kind == "readonly":
        target = paths.path(op)
        try:
            sc.mount(target, target, None, sc.MS_BIND | sc.MS_REC)
        except FileNotFoundError:
            return  # not on this kernel
        _remount_ro(target)
    elif kind == "remount_ro":
        _remount_ro(paths.path(op) if op.target != "/" else "/")
    elif kind == "lo_up":
        sc.loopback_up()
    elif kind == "netns":
        if join_net is None:
            raise ValueError("no network namespace to join")
        join_net()
    elif kind == "rslave":
        sc.mount(None, "/", None, sc.MS_SLAVE | sc.MS_REC)
    elif kind == "rmdir":
        os.rmdir(paths.path(op))
    elif kind == "unlink":
        os.unlink(paths.path(op))
    elif kind == "pivot_root":
        _pivot_root(op.target)
    elif kind == "hostname":
        _sock.sethostname(op.target)
    else:
        raise ValueError(f"unknown setup step {kind!r}")
    paths.changed(op)


def execute_plan(ops: list[MountOp], root: str,
                 join_net: Callable[[], None] | None = None) -> None:
    """Run each step; an optional one that fails with ENOENT/EPERM/EACCES is skipped.
    ``join_net`` carries out a ``netns`` step."""
    paths = _InRoot(root)
    for op in ops:
        try:
            _do(op, paths, join_net)
        except OSError as exc:
            if op.optional and exc.errno in (errno.ENOENT, errno.EPERM, errno.EACCES,
                                             errno.EINVAL, errno.ENOTDIR, errno.ENOTEMPTY):
                continue
            what = op.kind if op.kind != "mount" else f"mount {op.fstype or op.source}"
            where = op.target if op.in_root or op.kind in ("pivot_root", "hostname") else \
                getattr(exc, "filename", None) or op.target
            hint = _setup_hint(op, exc)
            raise SetupFailed("RuntimeSetupError",
                              f"{what} {where}: {os.strerror(exc.errno or 0)}"
                              + (f" ({hint})" if hint else "")) from None


def _setup_hint(op: MountOp, exc: OSError) -> str:
    if op.fstype == "overlay" and exc.errno in (errno.EPERM, errno.EINVAL, errno.ENODEV):
        return ("kernel overlayfs is not usable in a user namespace here; "
                "try --storage-driver fuse or copy")
    if op.fstype == "proc" and exc.errno == errno.EPERM:
        return "the host's /proc is partly hidden (nested container?)"
    return ""


# -- the user and the command -----------------------------------------------------------------

def _read_db(path: str) -> list[list[str]]:
    """The rows of ``/etc/passwd`` or ``/etc/group``; read with ``os.read`` (PID 1 pays for
    each object ``open()`` builds in copy-on-write faults)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    except OSError:
        return []
    finally:
        os.close(fd)
    text = b"".join(chunks).decode("utf-8", "replace")
    return [ln.split(":") for ln in text.splitlines() if ln and not ln.startswith("#")]


def resolve_user(user: str) -> tuple[int, int, list[int], str, str]:
    """(uid, gid, supplementary gids, home, name) for ``-u``, read from the container's files."""
    name_part, _, group_part = user.partition(":")
    passwd = _read_db("/etc/passwd")
    entry = None
    if not name_part:
        name_part = "0"
    for row in passwd:
        if len(row) >= 7 and (row[0] == name_part or row[2] == name_part):
            entry = row
            break
    if entry is None:
        if not name_part.isdigit():
            raise SetupFailed("SpecError", f"unable to find user {name_part}: no matching "
                                           "entries in passwd file")
        uid, gid, home, name = int(name_part), 0, "/", ""
    else:
        uid, gid, home, name = int(entry[2]), int(entry[3]), entry[5] or "/", entry[0]
    groups_db = _read_db("/etc/group")
    if group_part:
        for row in groups_db:
            if len(row) >= 3 and (row[0] == group_part or row[2] == group_part):
                gid = int(row[2])
                break
        else:
            if not group_part.isdigit():
                raise SetupFailed("SpecError", f"unable to find group {group_part}: no matching "
                                               "entries in group file")
            gid = int(group_part)
    extra = [gid]
    if name and not group_part:
        for row in groups_db:
            if len(row) >= 4 and name in row[3].split(",") and row[2].isdigit():
                if int(row[2]) not in extra:
                    extra.append(int(row[2]))
    return uid, gid, extra, home, name


def _drop_privileges(spec: ContainerSpec) -> dict[str, str]:
    """Become ``spec.user``, with the container's capabilities and no_new_privs; returns the
    user's environment defaults. The parent-death signal is kept (a change of credentials
    clears it)."""
    uid, gid, groups, home, _ = resolve_user(spec.user)
    caps = frozenset(_CAPS[c] for c in spec.caps if c in _CAPS)
    pdeathsig = sc.get_pdeathsig()
    sc.drop_bounding_caps(caps)
    try:
        os.setgroups(groups)
    except OSError:
        pass  # single-uid mode: setgroups is denied, as documented
    try:
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise SetupFailed("SpecError", _unmapped_user(uid, gid, spec.map_mode)) from None
        raise
    if uid == 0:
        sc.set_caps(caps, caps, frozenset())
    sc.set_no_new_privs()
    if pdeathsig:
        sc.set_pdeathsig(pdeathsig)
    return {"HOME": home}


def _unmapped_user(uid: int, gid: int, map_mode: str) -> str:
    """Why ``-u uid:gid`` cannot be taken: the ids this container's maps cover."""
    if map_mode != "subuid":
        return (f"user {uid}:{gid} is not mapped in this container (single-uid mode maps only "
                "0; add ranges to /etc/subuid and /etc/subgid)")
    tops = []
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/self/{name}", "rb") as f:  # "inside outside count" a line
            rows = [line.split() for line in f.read().splitlines()]
        tops.append(max(int(row[0]) + int(row[2]) - 1 for row in rows))
    return (f"user {uid}:{gid} is not mapped in this container (it has uids 0-{tops[0]} and "
            f"gids 0-{tops[1]}: the size of the ranges in /etc/subuid and /etc/subgid)")


# What a command starts with at the default disposition: the signals this interpreter handles
# (glibc's posix_spawn resets those anyway) and the ones Python ignores at start-up.
_DEFAULT_SIGNALS = FORWARDED_SIGNALS + (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD)


def _spawnvpe(argv: list[str], env: dict[str, str],
              actions: list[tuple[int, ...]]) -> int:
    """``posix_spawn`` searching the container's PATH as execvp(3) does (a path that cannot be
    stat'ed is not tried); returns the pid. ``os.posix_spawnp`` would search our own PATH."""
    file = argv[0]
    if "/" in file:
        candidates = [file]
    else:
        candidates = [os.path.join(d or ".", file)
                      for d in (env.get("PATH") or os.defpath).split(os.pathsep)]
    denied: OSError | None = None
    for path in candidates:
        if len(candidates) > 1:
            try:
                os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                denied = denied or exc
                continue
        try:
            return os.posix_spawn(path, argv, env, file_actions=actions, setsid=True,
                                  setsigmask=(), setsigdef=_DEFAULT_SIGNALS)
        except (FileNotFoundError, NotADirectoryError):
            if len(candidates) == 1:
                raise
        except PermissionError as exc:
            denied = exc
        except OSError as exc:
            if exc.errno == errno.ENOEXEC:
                raise
            denied = denied or exc
    if denied is not None:
        raise denied
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), file)


def _exec_settled(pid: int) -> None:
    """Return once the command's exec is complete, as seen in ``/proc`` (its arguments in
    place): ``posix_spawn`` returns when the exec is past its point of no return, before the
    new program's memory is set up, and the caller's "started" (the control socket's EOF)
    would otherwise let a reader of ``/proc/PID/cmdline`` see it empty. PID 1 only: its
    ``/proc`` is the container's."""
    for _ in range(100_000):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read(1):
                    return
        except OSError:
            return  # gone already
        if signal.exited(pid):
            return  # exited already (a zombie's cmdline is empty too); reaped later
        os.sched_yield()


def pty_path(master_fd: int) -> str:
    """The container path of the pty whose master is ``master_fd`` (``ptsname``; ``ttyname``
    needs ``/proc/self``, which an exec helper outside the container's pid namespace lacks)."""
    number = sc.unpack_ints(fcntl.ioctl(master_fd, sc.TIOCGPTN, bytes(4)), signed=False)[0]
    return f"/dev/pts/{number}"


def spawn_command(spec: ContainerSpec, pty: str = "") -> int:
    """Start ``spec.argv`` in the container, in a session of its own; returns its pid.

    This process (PID 1, or an exec helper) takes the command's user, capabilities and
    no_new_privs first, and keeps them: all it does afterwards is wait and forward signals.
    ``posix_spawn`` is a vfork, without the copy-on-write faults a fork of this interpreter
    costs. ``pty``, a slave's path, is opened in the new session, so it becomes the command's
    controlling terminal, on 0, 1 and 2. Raises ``SetupFailed`` with Docker's status (126,
    127) when the command cannot start.
    """
    actions: list[tuple[int, ...]] = []
    if pty:
        actions = [(os.POSIX_SPAWN_OPEN, 0, pty, os.O_RDWR, 0),  # type: ignore[list-item]
                   (os.POSIX_SPAWN_DUP2, 0, 1), (os.POSIX_SPAWN_DUP2, 0, 2)]
    elif not spec.interactive:
        actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0)]  # type: ignore[list-item]
    workdir = spec.workdir or "/"
    _mkdirs(workdir)
    defaults = _drop_privileges(spec)
    env: dict[str, str] = {}
    for item in spec.env:
        k, _, v = item.partition("=")
        env[k] = v
    for k, v in defaults.items():
        env.setdefault(k, v)
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    if spec.hostname:
        env.setdefault("HOSTNAME", spec.hostname)
    if spec.tty:
        env.setdefault("TERM", "xterm")
    os.umask(0o022)
    try:
        os.chdir(workdir)
    except OSError as exc:
        raise SetupFailed("SpecError", f"cannot enter working directory {workdir}: "
                          f"{exc.strerror}", 126) from None
    argv = list(spec.argv)
    try:
        return _spawnvpe(argv, env, actions)
    except FileNotFoundError:
        if "/" in argv[0]:
            msg = f'exec: "{argv[0]}": stat {argv[0]}: no such file or directory'
        else:
            msg = f'exec: "{argv[0]}": executable file not found in $PATH'
        raise SetupFailed("CommandNotFound", msg, 127) from None
    except PermissionError:
        raise SetupFailed("CommandNotExecutable", f'exec: "{argv[0]}": permission denied',
                          126) from None
    except OSError as exc:
        raise SetupFailed("CommandNotExecutable", f'exec: "{argv[0]}": {exc.strerror}',
                          126) from None


# -- PID 1 ------------------------------------------------------------------------------------

def _run_payload(spec: ContainerSpec, payload: Payload, result_fd: int) -> NoReturn:
    """W for ``run_callable``: call ``payload`` in the container and write its bytes out."""
    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.chdir(spec.workdir or "/")
    except OSError:
        os.chdir("/")
    data = payload()
    view = memoryview(data)
    while view:
        view = view[os.write(result_fd, view):]
    os.close(result_fd)  # the caller's EOF now, not after this process's memory is torn down
    os._exit(0)


def init_main(spec: ContainerSpec, sock: _sock.Socket, payload: Payload | None = None,
               result_fd: int = -1, done_fd: int = -1, namespaces: int = 0,
               cgroup_wait: bool = False, settle: bool = True,
               plan: list[MountOp] | None = None, net_made: bool = False) -> NoReturn:
    """G: PID 1 of the container. ``done_fd``: where the command's status goes the moment it
    has exited (the cleanup then runs while this process's exit tears the namespaces down).

    ``namespaces``: those G makes itself, when its parent made only the user and PID ones
    (``sandbox.runtime.process.start`` with ``inline``); G then also starts the container's
    session, after being moved into its cgroup when ``cgroup_wait``. ``settle``: the command
    counts as started only once its exec is complete (``_exec_settled``). ``plan``: the
    spec's ``build_plan``, where the parent made it before forking (a third of the time it
    takes here, where each object touched first is a copy-on-write fault). ``net_made``: the
    parent makes the network namespace meanwhile and sends it (``_join_net``); the plan's
    ``netns`` step joins it.
    """
    code = 125
    try:
        sc.set_pdeathsig(signal.SIGKILL)
        if namespaces:
            os.setsid()
            if cgroup_wait:
                _recv_exact(sock, b"C", "the caller could not move the container into its "
                                        "cgroup")
        sc.unshare(sc.CLONE_NEWNS | namespaces)
        if plan is None:
            plan = build_plan(spec, net_made=net_made)
        execute_plan(plan, spec.rootfs.mountpoint,
                     (lambda: _join_net(sock)) if net_made else None)
        slave, pty = -1, ""
        if spec.tty:
            master, slave = os.openpty()
            pty = pty_path(master)
            _sock.send_fds(sock, [b"T"], [master])
            os.close(master)
        if spec.network.startswith(("slirp4netns", "pasta")):
            _recv_exact(sock, b"N", "the container's network could not be set up")
        forwarder = Forwarder()
        if payload is None:
            child = spawn_command(spec, pty)  # this process becomes the command's user too
            if settle:
                _exec_settled(child)
        else:
            child = os.fork()
            if child == 0:
                forwarder.restore()
                try:
                    sock.close()
                    _run_payload(spec, payload, result_fd)
                except BaseException as exc:  # noqa: BLE001 - report, never a traceback
                    os.write(2, f"sandbox: container payload: {exc}\n".encode())
                    os._exit(125)
        if slave >= 0:
            os.close(slave)
        sock.close()
        forwarder.set_target(child)
        code = _reap_until(child)
        if done_fd >= 0:
            try:
                os.kill(-1, signal.SIGKILL)  # the rest of the container, before the cleanup
            except OSError:
                pass
            os.write(done_fd, code.to_bytes(2, "little"))
    except SetupFailed as exc:
        report(sock, exc.kind, exc.message, exc.code)
        code = exc.code
    except BaseException as exc:  # noqa: BLE001
        report(sock, "SandboxError", f"container setup: {exc}", 125)
        code = 125
    os._exit(code)


def _reap_until(main_pid: int) -> int:
    """Reap every child until ``main_pid`` exits; return its Docker-style status."""
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 125
        if pid == main_pid:
            return _docker_status(status)


def _docker_status(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


# -- C: the namespace holder ------------------------------------------------------------------

def namespace_flags(spec: ContainerSpec) -> int:
    """The namespaces a container has beside its user, PID and mount ones."""
    flags = sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWCGROUP
    return flags if spec.network == "host" else flags | sc.CLONE_NEWNET


def _join_net(sock: _sock.Socket) -> None:
    """Join the network namespace the parent made (``L`` with its descriptor), or fail with
    the reason it sent (``X``)."""
    msg, fds, _, _ = _sock.recv_fds(sock, 1024, 1)
    try:
        if msg[:1] != b"L" or not fds:
            why = msg[1:].decode(errors="replace") if msg[:1] == b"X" else "the caller is gone"
            raise SetupFailed("RuntimeSetupError",
                              f"the container's network namespace could not be made: {why}")
        sc.setns(fds[0], sc.CLONE_NEWNET)
    finally:
        for fd in fds:
            os.close(fd)


def _recv_exact(sock: _sock.Socket, want: bytes, failure: str,
                kind: str = "RuntimeSetupError") -> None:
    """Wait for the caller's go-ahead ``want``; anything else (an abort, its death) is
    ``failure``."""
    if sock.recv(64) != want:
        raise SetupFailed(kind, failure, 125)


def container_main(spec: ContainerSpec, sock: _sock.Socket, payload: Payload | None = None,
                   result_fd: int = -1) -> NoReturn:
    """C: create the namespaces, start PID 1, wait for it, clean up. Never returns.

    With ``payload`` (``run_callable``), PID 1's child calls it instead of exec'ing a command.
    """
    code = 125
    parent = os.getppid()
    fuse_pid = unreaped = 0
    try:
        sc.set_pdeathsig(signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(125)
        os.setsid()
        try:
            sc.unshare(sc.CLONE_NEWUSER)
        except OSError as exc:
            raise SetupFailed("UserNamespaceUnavailable",
                              userns_failure_message(exc.errno or 0)) from None
        _send(sock, b"U")
        _recv_exact(sock, b"M", "the caller could not write the uid/gid maps",
                    "UserNamespaceUnavailable")
        if spec.rootfs.scratch:
            _mount_scratch(spec.rootfs)
        if spec.rootfs.driver == "fuse":
            fuse_pid = _start_fuse(spec)
        sc.unshare(sc.CLONE_NEWPID | namespace_flags(spec))
        forwarder = Forwarder()
        forwarder.on_parent_death = signal.SIGKILL  # our caller died: take the container down
        # With a layer to remove (and no fuse server still serving it), the removal starts as
        # soon as the command has exited, while G's exit tears its namespaces down.
        early = spec.remove and not fuse_pid
        done_r, done_w = os.pipe2(os.O_CLOEXEC) if early else (-1, -1)
        gpid = _start_init(spec, sock, payload, result_fd, forwarder, done_r, done_w)
        forwarder.set_target(gpid)
        code = _wait_init(gpid, done_r)
        unreaped = gpid if early else 0  # G reported first: reaped after the cleanup
    except SetupFailed as exc:
        report(sock, exc.kind, exc.message, exc.code)
        code = exc.code
    except BaseException as exc:  # noqa: BLE001
        report(sock, "SandboxError", f"container setup: {exc}", 125)
        code = 125
    try:
        if fuse_pid:
            _stop_fuse(spec, fuse_pid)
        if spec.rootfs.scratch:
            try:
                sc.umount2(spec.rootfs.work, sc.MNT_DETACH)
            except OSError:
                pass
        _cleanup(spec)
        if unreaped:
            _wait_init(unreaped)
    finally:
        os._exit(code)  # a forked copy of the caller: never return into its code


def _mount_scratch(rootfs: RootfsSpec) -> None:
    """``RootfsSpec.scratch``, in C: a mount namespace of C's own (G copies it) and a tmpfs over
    ``work`` holding ``upper_dir`` and ``work_dir``, with the host image's skeleton (its
    top-level directories and links, a work directory per overlay). overlayfs then
    makes and frees its inodes in memory, not in the store's filesystem; the layer is gone with
    the last process of the container."""
    upper: list[tuple[str, str | None]] = []
    work: list[str] = []
    if rootfs.host:  # as Engine._host_rootfs makes it in the store for a layer on disk
        with os.scandir("/") as it:
            upper = [(e.name, os.readlink(e.path) if e.is_symlink() else None) for e in it
                     if e.is_symlink() or e.is_dir(follow_symlinks=False)]
        work = [lower.strip("/") for lower in rootfs.lowers]
    sc.unshare(sc.CLONE_NEWNS)
    sc.mount(None, "/", None, sc.MS_SLAVE | sc.MS_REC)
    sc.mount("tmpfs", rootfs.work, "tmpfs", sc.MS_NOSUID, "mode=0755")
    os.mkdir(rootfs.upper_dir, 0o755)
    os.mkdir(rootfs.work_dir, 0o755)
    for name in work:
        os.mkdir(os.path.join(rootfs.work_dir, name), 0o755)
    for name, link in upper:
        if link is None:
            os.mkdir(os.path.join(rootfs.upper_dir, name), 0o755)
        else:
            os.symlink(link, os.path.join(rootfs.upper_dir, name))


def _start_fuse(spec: ContainerSpec) -> int:
    """The ``fuse`` storage driver's half in C: a private mount namespace (owned by the
    container's user namespace) with ``fuse_overlay`` serving the rootfs; G copies this mount
    namespace and sees the mount. The server is ours, so it ends with the container."""
    from sandbox.drivers.fuse import mount_fuse

    sc.unshare(sc.CLONE_NEWNS)
    sc.mount(None, "/", None, sc.MS_SLAVE | sc.MS_REC)
    rootfs = spec.rootfs
    try:
        return mount_fuse(rootfs.lowers, rootfs.mountpoint, rootfs.upper, rootfs.work)
    except OSError:
        raise SetupFailed("RuntimeSetupError", "the fuse storage driver could not mount the "
                          "root filesystem (fuse_overlay failed; see its message above)") from None


def _stop_fuse(spec: ContainerSpec, pid: int) -> None:
    from sandbox.drivers.fuse import unmount_fuse

    unmount_fuse(spec.rootfs.mountpoint, pid)


def _start_init(spec: ContainerSpec, sock: _sock.Socket, payload: Payload | None,
                result_fd: int, forwarder: Forwarder, done_r: int, done_w: int) -> int:
    gpid = os.fork()
    if gpid == 0:
        forwarder.restore()
        if done_r >= 0:
            os.close(done_r)
        init_main(spec, sock, payload, result_fd, done_w)
    for fd in (result_fd, done_w):
        if fd >= 0:
            os.close(fd)
    _send(sock, b"G" + str(gpid).encode())
    sock.close()
    return gpid


def _wait_init(gpid: int, done_fd: int = -1) -> int:
    """G's status: from ``done_fd`` when G writes it there before exiting (G is then left to
    be reaped later), else when G is reaped."""
    if done_fd >= 0:
        data = os.read(done_fd, 2)
        os.close(done_fd)
        if len(data) == 2:
            return int.from_bytes(data, "little")
    while True:
        try:
            pid, status = os.waitpid(gpid, 0)
        except ChildProcessError:
            return 125
        if pid == gpid:
            return _docker_status(status)


def _cleanup(spec: ContainerSpec) -> None:
    """Remove the container's writable layer when it is ``--rm`` (inside the user namespace,
    where the range's uids are ours)."""
    if not spec.remove or not spec.container_dir or not spec.store_root:
        return
    from sandbox._cstate import owned_marker
    from sandbox.store import rm_rf, unlink_missing_ok

    try:
        rm_rf(spec.container_dir, under=spec.store_root)
        unlink_missing_ok(owned_marker(spec.container_dir))
    except OSError:
        pass


def _read_sysctl(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def userns_failure_message(err: int, read: Callable[[str], str] = _read_sysctl) -> str:
    """Name the cause of a refused ``unshare(CLONE_NEWUSER)`` and the fix."""
    if read("/proc/sys/user/max_user_namespaces") == "0":
        return ("user namespaces are disabled (user.max_user_namespaces=0): "
                "run `sudo sysctl -w user.max_user_namespaces=15000`")
    if read("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        return ("unprivileged user namespaces are disabled "
                "(kernel.unprivileged_userns_clone=0): run "
                "`sudo sysctl -w kernel.unprivileged_userns_clone=1`")
    if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        return ("AppArmor restricts unprivileged user namespaces "
                "(kernel.apparmor_restrict_unprivileged_userns=1): run `sudo sysctl -w "
                "kernel.apparmor_restrict_unprivileged_userns=0` or add an AppArmor profile "
                "with `userns,` for this interpreter")
    if err == errno.EINVAL:
        return "cannot create a user namespace from a multi-threaded process"
    if err == errno.ENOSPC:
        return ("the limit of user namespaces is reached (user.max_user_namespaces): "
                "raise it with sysctl")
    return f"cannot create a user namespace: {os.strerror(err)}"


def main() -> NoReturn:
    """``python -m sandbox.runtime.init FD``: C in a fresh interpreter (threaded callers)."""
    from sandbox.spec import spec_from_json

    fd = int(sys.argv[1])
    sock = _sock.from_fd(fd)
    _sock.set_inheritable(sock, False)  # closed by the exec: the caller's EOF means "started"
    container_main(spec_from_json(sock.recv(1 << 22)), sock)


if __name__ == "__main__":
    main()
