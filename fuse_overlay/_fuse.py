"""The one import shim for the fusepy API: mfusepy (libfuse 3 preferred) or fusepy (libfuse 2).

``FUSE_OVERLAY_BINDING=mfusepy|fusepy`` forces one; unset, mfusepy is used when importable.

mfusepy drops ``rename`` flags and folds ``UTIME_NOW``/``UTIME_OMIT`` into plain nanoseconds;
:class:`OverlayFUSE` passes both through so ``renameat2(RENAME_NOREPLACE)`` and ``touch -a``
behave as on the kernel's overlayfs.  Under fusepy it also supplies what fusepy lacks: ``init``
calls ``init_with_config(None, None)`` (the libfuse 3 settings become mount options, see
:func:`libfuse2_options`), ``create`` gets the open flags, ``utimens`` gets exact nanoseconds,
and libfuse 2.9's ``fallocate`` is wired up.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

BINDINGS = ("mfusepy", "fusepy")
_WANTED = os.environ.get("FUSE_OVERLAY_BINDING", "")
if _WANTED not in ("", *BINDINGS):
    raise ImportError(f"FUSE_OVERLAY_BINDING={_WANTED}: expected one of {', '.join(BINDINGS)}")


def _load() -> tuple[ModuleType, str]:
    if _WANTED != "fusepy":
        if "FUSE_LIBRARY_PATH" not in os.environ and "FUSE_LIBRARY_NAME" not in os.environ:
            if ctypes.util.find_library("fuse3"):
                os.environ["FUSE_LIBRARY_NAME"] = "fuse3"
        try:
            import mfusepy  # type: ignore[import-untyped]

            return mfusepy, "mfusepy"
        except ImportError:
            if _WANTED == "mfusepy":
                raise
    try:
        import fuse  # type: ignore[import-untyped]
    except OSError as exc:  # fusepy raises EnvironmentError when libfuse 2 is missing
        raise ImportError(f"fusepy cannot load libfuse 2 (Debian package libfuse2): {exc}") from exc
    if not hasattr(fuse, "FUSE") or not hasattr(fuse, "fuse_operations"):
        raise ImportError(f"the module 'fuse' at {fuse.__file__} is not fusepy")
    return fuse, "fusepy"


fuse, BINDING = _load()

FUSE = fuse.FUSE
FuseOSError = fuse.FuseOSError
fuse_get_context = fuse.fuse_get_context
LIBFUSE_MAJOR: int = int(getattr(fuse, "fuse_version_major", 2))

UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
FUSE_CAP_POSIX_ACL = 1 << 19  # libfuse 3; libfuse 2 has no POSIX ACL support

F = TypeVar("F", bound=Callable[..., Any])
logger = logging.getLogger(__name__)

__all__ = [
    "BINDING",
    "FUSE",
    "LIBFUSE_MAJOR",
    "FuseOSError",
    "Invalidator",
    "OverlayFUSE",
    "Operations",
    "fuse_get_context",
    "libfuse2_options",
    "overrides",
]


if BINDING == "mfusepy":
    Operations = fuse.Operations
else:

    _FusepyOperations: Any = fuse.Operations

    class Operations(_FusepyOperations):  # type: ignore[misc,no-redef]
        """fusepy's ``Operations`` plus the two handlers mfusepy has and fusepy lacks."""

        def init(self, path: str) -> None:
            """fusepy calls ``init``; ours are written against mfusepy's ``init_with_config``."""
            self.init_with_config(None, None)

        def init_with_config(self, conn: Any, config: Any) -> None:
            return None

        def fallocate(self, path: str | None, mode: int, offset: int, size: int, fh: int) -> int:
            raise FuseOSError(errno.EOPNOTSUPP)


def overrides(parent: type) -> Callable[[F], F]:
    """Check that the decorated handler exists in *parent* (mfusepy's ``overrides``)."""
    real = getattr(fuse, "overrides", None)
    if real is not None:
        return real(parent)  # type: ignore[no-any-return]

    def check(method: F) -> F:
        if not callable(getattr(parent, method.__name__, None)):
            raise TypeError(f"{method.__name__} does not override a {parent.__name__} method")
        return method

    return check


def libfuse2_options(
    entry_timeout: float, attr_timeout: float, negative_timeout: float, kernel_cache: bool,
    max_write: int,
) -> dict[str, str | bool]:
    """Mount options for libfuse 2, which takes as options what libfuse 3 puts in ``fuse_config``
    (set by ``init_with_config``).  ``hard_remove`` keeps ``.fuse_hidden`` files out of the upper
    directory; ``big_writes`` lifts libfuse 2's 4 KiB write requests."""
    return {
        "entry_timeout": repr(entry_timeout),
        "attr_timeout": repr(attr_timeout),
        "negative_timeout": repr(negative_timeout),
        "kernel_cache": kernel_cache,
        "hard_remove": True,
        "big_writes": True,
        "max_write": str(max_write or 131072),
    }


def _timespec_ns(ts: Any) -> int | None:
    """Nanoseconds of a ``struct timespec``; None for UTIME_OMIT."""
    if ts.tv_nsec == UTIME_OMIT:
        return None
    if ts.tv_nsec == UTIME_NOW:
        return time.time_ns()
    return int(ts.tv_sec) * 1_000_000_000 + int(ts.tv_nsec)


class _OverlayFUSEBase(FUSE):  # type: ignore[misc,valid-type]
    """What both bindings share: ``getattr`` filled field by field, per-handle ``direct_io``."""

    errors = "surrogateescape"  # mfusepy sets its own; fusepy has none

    def __init__(self, operations: Any, mountpoint: str, *, posix_acl: bool = False,
                 **kwargs: Any) -> None:
        self.posix_acl = posix_acl
        super().__init__(operations, mountpoint, **kwargs)

    def fgetattr(self, path: bytes | None, buf: Any, fip: Any) -> int:
        """``getattr`` filling ``struct stat`` field by field (mfusepy loops over a dict)."""
        fh = fip.contents.fh if fip else None
        _fill_stat(buf.contents, self.operations.getattr(self._name(path), fh))
        return 0

    def open(self, path: bytes, fip: Any) -> int:
        """``open`` that lets the operations ask for ``direct_io`` on one file handle."""
        fi = fip.contents
        fi.fh = self.operations.open(self._name(path), fi.flags)
        self._direct_io(fi)
        return 0

    def _direct_io(self, fi: Any) -> None:
        direct = getattr(self.operations, "wants_direct_io", None)
        if direct is not None and direct(fi.fh):
            fi.direct_io = 1

    def _name(self, path: bytes | None) -> str | None:
        return None if path is None else path.decode(self.encoding, self.errors)

    @staticmethod
    def _fh(fip: Any) -> int | None:
        return int(fip.contents.fh) if fip else None

    def _utimens(self, path: bytes | None, buf: Any, fip: Any) -> int:
        times = None
        if buf:
            times = (_timespec_ns(buf.contents.actime), _timespec_ns(buf.contents.modtime))
        ops = self.operations
        return ops.utimens(self._name(path), times, self._fh(fip))  # type: ignore[no-any-return]


class _MfusepyOverlayFUSE(_OverlayFUSEBase):
    """``FUSE`` with rename flags, exact ``utimens`` special values, READDIRPLUS, POSIX ACLs, and
    the file handle of ``ftruncate``/``fchmod``/``fchown``/``futimens`` (libfuse passes no path
    for them with ``nullpath_ok``)."""

    def init_fuse_3(self, conn: Any, config: Any) -> None:
        """Ask for POSIX ACLs as fuse-overlayfs does unless ``noacl``: the kernel then enforces
        and caches ``system.posix_acl_*``, which inside a user namespace it otherwise refuses."""
        if conn and self.posix_acl and conn.contents.capable & FUSE_CAP_POSIX_ACL:
            conn.contents.want |= FUSE_CAP_POSIX_ACL
        super().init_fuse_3(conn, config)

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        ops = self.operations
        return ops.rename(  # type: ignore[no-any-return]
            old.decode(self.encoding, self.errors), new.decode(self.encoding, self.errors), flags
        )

    def readdir_fuse_3(
        self, path: bytes | None, buf: Any, filler: Any, offset: int, fip: Any, flags: int
    ) -> int:
        """READDIR and READDIRPLUS in libfuse's offset mode: each entry gets the offset of the
        next, and with READDIRPLUS (flag 1) the attributes a LOOKUP would return
        (``FUSE_FILL_DIR_PLUS``), so a stat walk needs no LOOKUP per name.  (Entries filled
        with offset 0 go to a list whose READDIRPLUS attributes libfuse 3 drops: ino=0.)"""
        entries = getattr(self.operations, "readdir_entries", None)
        if entries is None:
            return super().readdir_fuse_3(path, buf, filler, offset, fip, flags)  # type: ignore[no-any-return]
        st = fuse.c_stat()
        size = ctypes.sizeof(st)
        enc, errs = self.encoding, self.errors
        for name, ino, mode, attrs, next_offset in entries(
            self._name(path), fip.contents.fh, offset, bool(flags & 1)
        ):
            if attrs is None:
                ctypes.memset(ctypes.byref(st), 0, size)
                st.st_ino, st.st_mode = ino, mode
                fill = 0
            else:
                _fill_stat(st, attrs)
                fill = 2  # FUSE_FILL_DIR_PLUS
            if filler(buf, name.encode(enc, errs), st, next_offset, fill) != 0:
                break
        return 0

    def utimens_fuse_2(self, path: bytes | None, buf: Any) -> int:
        return self._utimens(path, buf, None)

    def utimens_fuse_3(self, path: bytes | None, buf: Any, fip: Any) -> int:
        return self._utimens(path, buf, fip)

    def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
        return self.operations.truncate(  # type: ignore[no-any-return]
            self._name(path), length, self._fh(fip)
        )

    def chmod_fuse_3(self, path: bytes | None, mode: int, fip: Any) -> int:
        return self.operations.chmod(  # type: ignore[no-any-return]
            self._name(path), mode, self._fh(fip)
        )

    def chown_fuse_3(self, path: bytes | None, uid: int, gid: int, fip: Any) -> int:
        uid = -1 if uid == 0xFFFFFFFF else uid
        gid = -1 if gid == 0xFFFFFFFF else gid
        return self.operations.chown(  # type: ignore[no-any-return]
            self._name(path), uid, gid, self._fh(fip)
        )


def _fuse_operations_2_9() -> type[ctypes.Structure]:
    """fusepy's ``struct fuse_operations`` (it stops at ``ioctl``) with libfuse 2.9's tail, so
    ``fallocate`` (punching holes too) reaches the operations."""
    fields = list(fuse.fuse_operations._fields_)
    if any(f[0] == "fallocate" for f in fields):
        return fuse.fuse_operations  # type: ignore[no-any-return]
    fallocate = ctypes.CFUNCTYPE(
        ctypes.c_int, ctypes.c_char_p, ctypes.c_int, fuse.c_off_t, fuse.c_off_t,
        ctypes.POINTER(fuse.fuse_file_info),
    )
    tail = [("poll", ctypes.c_void_p), ("write_buf", ctypes.c_void_p),
            ("read_buf", ctypes.c_void_p), ("flock", ctypes.c_void_p), ("fallocate", fallocate)]
    return type("fuse_operations", (ctypes.Structure,), {"_fields_": fields + tail})


class _FusepyOverlayFUSE(_OverlayFUSEBase):
    """fusepy's ``FUSE`` (libfuse 2) completed: ``create`` with its flags, ``utimens`` in exact
    nanoseconds with ``UTIME_NOW``/``UTIME_OMIT``, ``fallocate``, NULL paths for unlinked open
    files.  libfuse 2 has no rename flags, READDIRPLUS, POSIX ACLs or writeback cache."""

    def __init__(self, operations: Any, mountpoint: str, **kwargs: Any) -> None:
        operations.flag_nullpath_ok = 1
        operations.flag_utime_omit_ok = 1
        libfuse_version = fuse._libfuse.fuse_version()
        if libfuse_version >= 29:
            setattr(fuse, "fuse_operations", _fuse_operations_2_9())  # noqa: B010 - fusepy reads it
        super().__init__(operations, mountpoint, **kwargs)

    def create(self, path: bytes, mode: int, fip: Any) -> int:
        fi = fip.contents
        fi.fh = self.operations.create(self._name(path), mode, fi.flags)
        self._direct_io(fi)
        return 0

    def utimens(self, path: bytes | None, buf: Any) -> int:
        return self._utimens(path, buf, None)

    def fallocate(self, path: bytes | None, mode: int, offset: int, size: int, fip: Any) -> int:
        return self.operations.fallocate(  # type: ignore[no-any-return]
            self._name(path), mode, offset, size, fip.contents.fh
        )


OverlayFUSE: type[_OverlayFUSEBase] = (
    _MfusepyOverlayFUSE if BINDING == "mfusepy" else _FusepyOverlayFUSE
)


def _fill_stat(st: Any, a: dict[str, int]) -> None:
    """Fill a ``struct stat`` from our ``getattr`` dict (times in nanoseconds)."""
    st.st_dev = 0
    st.st_ino = a["st_ino"]
    st.st_nlink = a["st_nlink"]
    st.st_mode = a["st_mode"]
    st.st_uid = a["st_uid"]
    st.st_gid = a["st_gid"]
    st.st_rdev = a["st_rdev"]
    st.st_size = a["st_size"]
    st.st_blksize = a["st_blksize"]
    st.st_blocks = a["st_blocks"]
    st.st_atimespec.tv_sec, st.st_atimespec.tv_nsec = divmod(a["st_atime"], 1_000_000_000)
    st.st_mtimespec.tv_sec, st.st_mtimespec.tv_nsec = divmod(a["st_mtime"], 1_000_000_000)
    st.st_ctimespec.tv_sec, st.st_ctimespec.tv_nsec = divmod(a["st_ctime"], 1_000_000_000)


class Invalidator:
    """Drops the kernel's cached attributes and pages of other names of a hard-linked inode.

    libfuse's high-level API gives every name its own kernel inode, so a change through one
    name of a hard link is not seen through the others until their cache expires.  The
    notifications are sent from a helper thread: a handler must not wait for the kernel while
    the kernel waits for that handler.
    """

    def __init__(self) -> None:
        self._fuse: ctypes.c_void_p | None = None
        self._queue: queue.SimpleQueue[tuple[bytes, threading.Event]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        libfuse = getattr(fuse, "_libfuse", None)
        self._call = getattr(libfuse, "fuse_invalidate_path", None) if LIBFUSE_MAJOR == 3 else None

    def bind(self) -> None:
        """Remember the ``struct fuse``; call from inside a handler (``init``)."""
        if self._call is None:
            return
        self._fuse = ctypes.c_void_p(fuse._libfuse.fuse_get_context().contents.fuse)
        self._call.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._call.restype = ctypes.c_int

    def invalidate(self, path: str, wait: float = 0.05) -> None:
        """Invalidate *path*; wait up to *wait* seconds so the caller's next call sees it.

        The wait is bounded: should the kernel need this very thread first, it goes on.
        """
        if self._fuse is None:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fuse-invalidate", daemon=True)
            self._thread.start()
        done = threading.Event()
        self._queue.put((path.encode("utf-8", "surrogateescape"), done))
        done.wait(wait)

    def _run(self) -> None:
        assert self._call is not None
        while True:
            path, done = self._queue.get()
            result = self._call(self._fuse, path)
            done.set()
            if result not in (0, -2):  # -ENOENT: the name went away meanwhile
                logger.debug("fuse_invalidate_path(%r) = %d", path, result)
