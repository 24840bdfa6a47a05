"""Command line of ``python -m fuse_overlay``: fuse-overlayfs's syntax, into a frozen config."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from fuse_overlay.ownership import IdMapping, Ownership

__all__ = ["MountConfig", "Tuning", "UsageError", "parse_args", "split_escaped"]


class UsageError(ValueError):
    """A command-line mistake; rendered as one line by ``__main__``."""


@dataclass(frozen=True, slots=True)
class Tuning:
    """Kernel-cache and threading knobs, chosen by bench/bench_fuse_overlay.py.

    Measured on 2 shared cores (ratios to fuse-overlayfs, same run; lower is better):

    - ``threaded=1`` (libfuse worker threads): untar 1.4-2.5x, stat walk 1.6-2.4x against
      1.1-1.4x single-threaded: the GIL serialises the handlers anyway, so threads only add
      hand-offs.  Kept off.
    - ``timeout=1,negative_timeout=0`` (libfuse defaults): stat walk 1.8-2.2x, seq write
      up to 2x.  Every change goes through this process, so long timeouts are safe.  Kept long.
    - ``writeback=0``: untar 1.6-2.7x instead of 1.1-1.4x (tar's 10 KiB writes each became a
      request).  Kept on; hard-linked upper files are opened with direct_io to stay coherent.
    - ``kernel_cache=0``: seq read 1.8x instead of 1.4x.  Kept on.
    - ``max_write=131072``: no gain over libfuse 3's 1 MiB default.  Default kept.
    """

    entry_timeout: float = 86400.0
    attr_timeout: float = 86400.0
    negative_timeout: float = 86400.0
    kernel_cache: bool = True
    threads: bool = False
    writeback: bool = True
    max_write: int = 0  # 0: libfuse's default (1 MiB with libfuse 3)


@dataclass(frozen=True, slots=True)
class MountConfig:
    mountpoint: str
    lowerdirs: tuple[str, ...]
    upperdir: str | None = None
    workdir: str | None = None
    ownership: Ownership = Ownership()
    noacl: bool = False
    volatile: bool = False
    read_only: bool = False
    foreground: bool = False
    debug: bool = False
    ready_fd: int | None = None
    die_with_parent: bool = False
    tuning: Tuning = Tuning()
    fuse_options: dict[str, str | bool] = field(default_factory=dict)


# fuse-overlayfs and kernel overlayfs options accepted for compatibility but without effect here
_IGNORED = {
    "fast_ino",
    "noxattrs",
    "plugins",
    "static_nlink",
    "xattr_permissions",
    "redirect_dir",
    "index",
    "metacopy",
    "userxattr",
    "xino",
    "nfs_export",
    "context",
    "fscontext",
    "defcontext",
    "rootcontext",
    "suid",
    "dev",
    "max_read",  # libfuse 3 refuses it unless init sets conn.max_read; it measured no gain
}
# libfuse / mount options handed to libfuse unchanged
_LIBFUSE = {
    "allow_other",
    "allow_root",
    "default_permissions",
    "fsname",
    "subtype",
    "max_readahead",
    "max_background",
    "congestion_threshold",
    "auto_unmount",
    "nodev",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "sync",
    "async",
    "dirsync",
    "blkdev",
    "blksize",
    "clone_fd",
    "max_idle_threads",
    "rw",
}


def split_escaped(text: str, sep: str, *, unescape: bool = True) -> list[str]:
    """Split *text* on *sep*, honouring backslash escapes (``\\,`` and ``\\:``).

    With ``unescape=False`` only the escaped separator is unescaped; other escapes stay for a
    later split (the ``:`` of a lowerdir inside the ``,`` list of options).
    """
    parts: list[str] = []
    cur: list[str] = []
    chars = iter(text)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "\\")
            if not unescape and nxt != sep:
                cur.append("\\")
            cur.append(nxt)
        elif ch == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _bool(value: str | bool, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"option {key}={value}: expected 0 or 1")


def _int(value: str | bool, key: str) -> int:
    try:
        return int(str(value), 0)
    except ValueError:
        raise UsageError(f"option {key}={value}: expected an integer") from None


def _float(value: str | bool, key: str) -> float:
    try:
        return float(str(value))
    except ValueError:
        raise UsageError(f"option {key}={value}: expected a number") from None


def _path(value: str | bool | None) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    return os.path.abspath("".join(split_escaped(value, "\0")))


def _parse_opts(raw: list[str]) -> dict[str, str | bool]:
    opts: dict[str, str | bool] = {}
    for chunk in raw:
        for item in split_escaped(chunk, ",", unescape=False):
            if not item:
                continue
            key, eq, value = item.partition("=")
            opts[key] = value if eq else True
    return opts


def parse_args(argv: list[str]) -> MountConfig:
    """Parse ``[-f] [-d] [-s] [-o OPTS]... MOUNTPOINT`` as fuse-overlayfs does."""
    raw: list[str] = []
    positional: list[str] = []
    flags = {"foreground": False, "debug": False, "single": False}
    ready_fd: int | None = None
    die_with_parent = False
    args = iter(argv)
    for arg in args:
        if arg == "-o":
            raw.append(next(args, ""))
        elif arg.startswith("-o"):
            raw.append(arg[2:])
        elif arg == "-f":
            flags["foreground"] = True
        elif arg in ("-d", "--debug"):
            flags["debug"] = flags["foreground"] = True
        elif arg == "-s":
            flags["single"] = True
        elif arg == "--ready-fd":
            ready_fd = _int(next(args, ""), "--ready-fd")
        elif arg == "--die-with-parent":
            die_with_parent = True
        elif arg.startswith("--ready-fd="):
            ready_fd = _int(arg.split("=", 1)[1], "--ready-fd")
        elif arg.startswith("-") and arg != "-":
            raise UsageError(f"unknown argument {arg}; usage: fuse-overlay [-f] [-d] -o OPTS MNT")
        else:
            positional.append(arg)
    if len(positional) != 1:
        raise UsageError("expected exactly one mount point; usage: fuse-overlay -o OPTS MOUNTPOINT")
    config = _from_options(_parse_opts(raw), positional[0], ready_fd)
    tuning = config.tuning
    if flags["single"]:
        tuning = dataclasses.replace(tuning, threads=False)
    return dataclasses.replace(
        config,
        foreground=flags["foreground"],
        debug=flags["debug"],
        tuning=tuning,
        die_with_parent=die_with_parent,
    )


def _from_options(
    opts: dict[str, str | bool], mountpoint: str, ready_fd: int | None
) -> MountConfig:
    lower = opts.pop("lowerdir", "")
    upper = opts.pop("upperdir", None)
    work = opts.pop("workdir", None)
    if isinstance(lower, bool) or not lower:
        raise UsageError("missing lowerdir=DIR[:DIR...]")
    lowerdirs = tuple(os.path.abspath(p) for p in split_escaped(lower, ":") if p)
    upperdir = _path(upper)
    workdir = _path(work)
    if upperdir and not workdir:
        raise UsageError("upperdir needs workdir=DIR on the same file system")
    for path in (*lowerdirs, upperdir, workdir, mountpoint):
        if path is not None and not os.path.isdir(path):
            raise UsageError(f"{path}: not a directory")
    if upperdir and workdir and os.stat(upperdir).st_dev != os.stat(workdir).st_dev:
        raise UsageError(f"workdir {workdir} must be on the same file system as upperdir")
    ownership, tuning = Ownership(), Tuning()
    fuse_options: dict[str, str | bool] = {}
    noacl = volatile = read_only = False
    for key, value in opts.items():
        if key == "squash_to_root":
            ownership = dataclasses.replace(ownership, squash_uid=0, squash_gid=0)
        elif key == "squash_to_uid":
            ownership = dataclasses.replace(ownership, squash_uid=_int(value, key))
        elif key == "squash_to_gid":
            ownership = dataclasses.replace(ownership, squash_gid=_int(value, key))
        elif key in ("uidmapping", "gidmapping"):
            try:
                ranges = IdMapping.parse_list(str(value))
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            if key == "uidmapping":
                ownership = dataclasses.replace(ownership, uid_map=ranges)
            else:
                ownership = dataclasses.replace(ownership, gid_map=ranges)
        elif key == "noacl":
            noacl = True
        elif key == "volatile":
            volatile = True
        elif key == "fsync":
            volatile = volatile or not _bool(value, key)
        elif key == "ro":
            read_only = True
            fuse_options["ro"] = True
        elif key in ("timeout", "entry_timeout", "attr_timeout"):
            seconds = _float(value, key)
            if key != "attr_timeout":
                tuning = dataclasses.replace(tuning, entry_timeout=seconds)
            if key != "entry_timeout":
                tuning = dataclasses.replace(tuning, attr_timeout=seconds)
        elif key == "negative_timeout":
            tuning = dataclasses.replace(tuning, negative_timeout=_float(value, key))
        elif key in ("kernel_cache", "writeback", "threaded"):
            name = {"threaded": "threads"}.get(key, key)
            tuning = dataclasses.replace(tuning, **{name: _bool(value, key)})
        elif key in ("max_write", "big_writes_size"):
            tuning = dataclasses.replace(tuning, max_write=_int(value, key))
        elif key == "big_writes":
            pass  # always on with libfuse 3
        elif key in _LIBFUSE:
            fuse_options[key] = value
        elif key in _IGNORED:
            continue
        else:
            raise UsageError(f"unknown option {key}; see fuse-overlay -h")
    return MountConfig(
        mountpoint=os.path.abspath(mountpoint),
        lowerdirs=lowerdirs,
        upperdir=upperdir,
        workdir=workdir,
        ownership=ownership,
        noacl=noacl,
        volatile=volatile,
        read_only=read_only or upperdir is None,
        ready_fd=ready_fd,
        tuning=tuning,
        fuse_options=fuse_options,
    )
