"""The only module that issues raw syscalls.

``os.*`` is used where Python has the call (``os.unshare``/``os.setns`` on 3.12+), ``ctypes`` with
``use_errno=True`` otherwise. Every wrapper raises ``OSError(errno, strerror, path)`` whose
``filename`` names the operand and whose message names the operation, so callers can turn it into
a ``RuntimeSetupError`` without guessing.
"""

from __future__ import annotations

import errno as _errno
import fcntl
import os
import sys

from sandbox import _sig as _signal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

__all__ = [
    "CLONE_NEWNS", "CLONE_NEWUTS", "CLONE_NEWIPC", "CLONE_NEWUSER", "CLONE_NEWPID",
    "CLONE_NEWNET", "CLONE_NEWCGROUP",
    "MS_RDONLY", "MS_NOSUID", "MS_NODEV", "MS_NOEXEC", "MS_REMOUNT", "MS_BIND", "MS_MOVE",
    "MS_REC", "MS_PRIVATE", "MS_SLAVE", "MS_STRICTATIME", "MS_RELATIME", "MNT_DETACH",
    "unshare", "setns", "mount", "umount2", "pivot_root", "prctl", "set_no_new_privs",
    "drop_bounding_caps", "set_caps", "set_pdeathsig", "get_pdeathsig", "set_child_subreaper",
    "loopback_up", "mknod_whiteout", "TIOCGPTN",
    "clone_holder",
]

CLONE_VM = 0x00000100
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_GET_PDEATHSIG = 2
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

_SYSCALLS_BY_ARCH = {
    "x86_64": {"pivot_root": 155, "capset": 126},
    "aarch64": {"pivot_root": 41, "capset": 91},
}


class _Libc:
    """libc's functions through ``_ctypes`` alone (``errno`` kept, as ``use_errno=True``).

    ``import ctypes`` costs about 2.5 ms, paid by every container's first process on the way
    to ``unshare``; the C module it wraps costs a fifth of that. Arguments use ctypes' default
    conversions (int → int, bytes → char *, None → NULL); ``c_ulong`` wraps wider ones.
    """

    def __init__(self) -> None:
        import _ctypes

        ct: Any = _ctypes  # private C module: typeshed types only what ctypes exposes

        class c_int(ct._SimpleCData):  # type: ignore[misc]  # noqa: N801 - ctypes' names
            _type_ = "i"

        class c_ulong(ct._SimpleCData):  # type: ignore[misc]  # noqa: N801
            _type_ = "L"

        class c_char(ct._SimpleCData):  # type: ignore[misc]  # noqa: N801
            _type_ = "c"

        class Func(ct.CFuncPtr):  # type: ignore[misc]
            _flags_ = ct.FUNCFLAG_CDECL | ct.FUNCFLAG_USE_ERRNO
            _restype_ = c_int

        self._array = ct.Array
        self._c_char = c_char
        self._addressof = ct.addressof
        self.c_int = c_int
        self.byref = ct.byref

        self._handle = ct.dlopen(None, 0)
        self._func = Func
        self.c_ulong = c_ulong
        self.get_errno = ct.get_errno
        self._cache: dict[str, Any] = {}

    def stack(self, size: int) -> tuple[Any, int]:
        """A zeroed ``size``-byte buffer and its top, 16-byte aligned (a stack for clone(2))."""
        buf_type: Any = type("Stack", (self._array,), {"_type_": self._c_char, "_length_": size})
        buf = buf_type()
        return buf, (self._addressof(buf) + size) & ~15

    def __getattr__(self, name: str) -> Any:
        func = self._cache.get(name)
        if func is None:
            func = self._cache[name] = self._func((name, self))
        return func


_libc: _Libc | None = None


def _lib() -> _Libc:
    global _libc
    if _libc is None:
        _libc = _Libc()
    return _libc


def preload() -> None:
    """Load libc's entry points now, in a process about to fork containers: each child then
    inherits them instead of paying ``_ctypes``' set-up (about 1.5 ms) on its way to
    ``unshare``. Idempotent; the pytest plugin forks one container per isolated test."""
    lib = _lib()
    for name in ("prctl", "unshare", "mount", "umount2", "syscall", "setns"):
        getattr(lib, name)


def _check(ret: int, op: str, path: str | None = None) -> int:
    if ret == -1:
        err = _lib().get_errno()
        raise OSError(err, f"{op}: {os.strerror(err)}", path)
    return ret


def _enc(value: str | bytes | None) -> bytes | None:
    if value is None:
        return None
    return os.fsencode(value)


def unshare(flags: int) -> None:
    """unshare(2). Fails with EINVAL for CLONE_NEWUSER in a multi-threaded process."""
    if hasattr(os, "unshare"):
        try:
            os.unshare(flags)
        except OSError as exc:
            raise OSError(exc.errno, f"unshare: {os.strerror(exc.errno or 0)}", None) from None
        return
    _check(_lib().unshare(flags), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2) on an open namespace file descriptor."""
    if hasattr(os, "setns"):
        try:
            os.setns(fd, nstype)
        except OSError as exc:
            raise OSError(exc.errno, f"setns: {os.strerror(exc.errno or 0)}", None) from None
        return
    _check(_lib().setns(fd, nstype), "setns")


def clone_holder(flags: int, seconds: int) -> tuple[int, Any]:
    """A child process, in new namespaces (``flags``, ``CLONE_NEW*``), that only holds them: it
    sleeps, at most ``seconds``, until it is killed. Returns its pid and its stack, which the
    caller keeps until the child is reaped.

    It is clone(2) with ``CLONE_VM``: the child runs libc's ``sleep`` on a stack of its own in
    this process's memory, where a fork would copy the page tables and make every page this
    process writes afterwards fault once. The namespaces exist when clone returns, so there is
    no handshake; ``SIGCHLD`` reports its exit as a fork's would. It shares no file table, fs
    or signal handlers, so ``setns`` into its user namespace stays allowed for this process.
    A bare libc call cannot ask for a parent-death signal: ``seconds`` bounds how long it
    outlives a caller killed before it could kill the child.
    """
    lib = _lib()
    stack, top = lib.stack(64 * 1024)  # sleep needs little; a signal handler run there, more
    pid = lib.clone(lib.sleep, lib.c_ulong(top), flags | CLONE_VM | _signal.SIGCHLD,
                    lib.c_ulong(seconds))
    _check(pid, "clone")
    return pid, stack


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    """mount(2)."""
    _check(_lib().mount(_enc(source), _enc(target), _enc(fstype), flags, _enc(data)),
           "mount", target)


def umount2(target: str, flags: int = 0) -> None:
    """umount2(2)."""
    _check(_lib().umount2(_enc(target), flags), "umount2", target)


def _sysno(name: str) -> int:
    machine = os.uname().machine
    try:
        return _SYSCALLS_BY_ARCH[machine][name]
    except KeyError:
        raise OSError(_errno.ENOSYS, f"{name}: no syscall number for {machine}", None) from None


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2) (no libc wrapper, so through syscall(2))."""
    _check(_lib().syscall(_sysno("pivot_root"), _enc(new_root), _enc(put_old)),
           "pivot_root", new_root)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2)."""
    lib = _lib()
    ul = lib.c_ulong
    return _check(lib.prctl(option, ul(arg2), ul(arg3), ul(arg4), ul(arg5)), "prctl")


def set_no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def set_pdeathsig(sig: int) -> None:
    prctl(PR_SET_PDEATHSIG, sig)


def pack_ints(values: Iterable[int], size: int = 4, *, signed: bool = True) -> bytes:
    """Native-endian C integers, as ``struct.pack("3i", ...)``; importing struct cost a tenth
    of a millisecond of every ``sandbox run``."""
    return b"".join(v.to_bytes(size, sys.byteorder, signed=signed) for v in values)


def unpack_ints(data: bytes, size: int = 4, *, signed: bool = True) -> list[int]:
    """The inverse of ``pack_ints`` (a trailing partial integer is ignored)."""
    return [int.from_bytes(data[i:i + size], sys.byteorder, signed=signed)
            for i in range(0, len(data) - size + 1, size)]


def get_pdeathsig() -> int:
    """The parent-death signal (0 for none): the kernel clears it when the process's
    credentials change, so whoever changes them and wants it kept sets it again."""
    lib = _lib()
    sig = lib.c_int(0)  # not a char[] of a type made here: making one cost PID 1 0.1 ms
    _check(lib.prctl(PR_GET_PDEATHSIG, lib.byref(sig)), "prctl")
    return int(sig.value)


def set_child_subreaper() -> None:
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def drop_bounding_caps(keep: frozenset[int]) -> None:
    """Drop every capability not in ``keep`` from the bounding and ambient sets.

    One prctl(2) per capability (some 27 of them in every container's PID 1), made here
    directly with its arguments built once: through ``prctl`` they took 180 us, now 105. The
    first capability past this kernel's last fails with EINVAL, which ends the loop (reading
    ``cap_last_cap`` instead cost PID 1 an open, a read and a close)."""
    lib = _lib()
    call, ul = lib.prctl, lib.c_ulong
    zero = ul(0)
    for cap in range(64):
        if cap in keep:
            continue
        if call(PR_CAPBSET_DROP, ul(cap), zero, zero, zero) == -1:
            err = lib.get_errno()
            if err == _errno.EINVAL:
                break  # past the last capability
            raise OSError(err, f"prctl: {os.strerror(err)}", None)
    try:
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError:
        pass


def set_caps(effective: frozenset[int], permitted: frozenset[int],
             inheritable: frozenset[int]) -> None:
    """capset(2) with the v3 (64-bit) layout."""
    def words(caps: frozenset[int]) -> tuple[int, int]:
        value = 0
        for cap in caps:
            value |= 1 << cap
        return value & 0xFFFFFFFF, value >> 32

    header = pack_ints((0x20080522, 0), signed=False)  # _LINUX_CAPABILITY_VERSION_3, this thread
    e, p, i = words(effective), words(permitted), words(inheritable)
    data = pack_ints((e[0], p[0], i[0], e[1], p[1], i[1]), signed=False)
    # read-only for the kernel (a v3 header is not written back): bytes pass as char *
    _check(_lib().syscall(_sysno("capset"), header, data), "capset")


# TIOCGPTN, _IOR('T', 0x30, unsigned int) in asm-generic (both architectures above): termios
# lacks it
TIOCGPTN = 0x80045430
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def loopback_up() -> None:
    """Bring ``lo`` up in the current network namespace (bubblewrap ``loopback_setup``)."""
    from sandbox._sock import udp

    sock = udp()
    try:
        name = b"lo".ljust(16, b"\0")  # struct ifreq: the name, then (here) a short of flags
        res = fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, name + bytes(16))
        flags = unpack_ints(res[16:18], 2)[0]
        fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, name + pack_ints((flags | _IFF_UP,), 2)
                    + bytes(14))
    finally:
        sock.close()


def mknod_whiteout(path: str) -> None:
    """Create an overlayfs whiteout (a 0:0 character device)."""
    import stat

    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
