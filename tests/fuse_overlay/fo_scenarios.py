"""Union-filesystem scenarios, each run on kernel overlayfs, fuse_overlay and a plain directory.

A scenario gets the merged mount point and returns a JSON-able observation; the tests assert that
every implementation observes the same thing.  Names follow unionmount-testsuite's test files
where one matches (open-plain, open-trunc, hard-link, rename-exdev, ...).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

Tree = dict[str, Any]  # "path": "content" | None (directory) | ("symlink", target)
SCENARIOS: dict[str, Scenario] = {}


class Scenario:
    def __init__(
        self, layers: list[Tree], fn: Callable[[Path], Any], plain: bool, oracle: str,
        extra: str, upper: bool, expect: Any, upper_tree: Tree | None = None,
    ) -> None:
        self.layers, self.fn, self.plain, self.oracle = layers, fn, plain, oracle
        self.extra, self.upper, self.expect = extra, upper, expect
        self.upper_tree = upper_tree

    def runs_on(self, kind: str) -> bool:
        if kind == "plain":
            return self.plain
        if kind == "kernel":
            return self.oracle == "kernel" or not self.extra
        return True

BASE: Tree = {
    "a": "lower a\n",
    "b": "lower b\n",
    "dir/": None,
    "dir/x": "x\n",
    "dir/sub/": None,
    "dir/sub/deep": "deep\n",
    "empty/": None,
    "link": ("symlink", "a"),
    "dirlink": ("symlink", "dir"),
    "broken": ("symlink", "nowhere"),
    "exe": "#!/bin/sh\n",
}
TOP: Tree = {
    "a": "top a\n",
    "dir/": None,
    "dir/y": "y\n",
    "only_top": "t\n",
}


def scenario(
    *layers: Tree, plain: bool = True, oracle: str = "kernel", extra: str = "",
    upper: bool = True, expect: Any = None, upper_tree: Tree | None = None,
) -> Callable[[Callable[[Path], Any]], Callable[[Path], Any]]:
    """Register a scenario over lower *layers* (top first).

    ``plain=False``: a plain directory cannot act it out; *oracle*: the implementation whose
    observation fuse_overlay must match (the kernel, or fuse-overlayfs for formats the kernel
    does not read, or "expect" to compare with the literal *expect*); *extra*: more mount
    options (fuse implementations only, unless the oracle is the kernel); ``upper=False``: a
    read-only union; *upper_tree*: what the upper directory holds before mounting.
    """

    def register(fn: Callable[[Path], Any]) -> Callable[[Path], Any]:
        name = fn.__name__.replace("_", "-")
        SCENARIOS[name] = Scenario(
            list(layers) or [TOP, BASE], fn, plain, oracle, extra, upper, expect, upper_tree
        )
        return fn

    return register


def build(root: Path, tree: Tree) -> None:
    for rel, value in sorted(tree.items()):
        path = root / rel.rstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if value is None:
            path.mkdir(exist_ok=True)
        elif isinstance(value, tuple) and value[0] == "whiteout":
            os.mknod(path, stat.S_IFCHR, 0)
        elif isinstance(value, tuple) and value[0] == "sparse":
            with open(path, "wb") as fh:  # a hole, then data at value[1]
                fh.seek(value[1])
                fh.write(value[2].encode())
        elif isinstance(value, tuple):
            os.symlink(value[1], path)
        else:
            path.write_text(value)
    if (root / "exe").exists():
        os.chmod(root / "exe", 0o755)
    if tree is OPQ_TOP:
        os.setxattr(root / "opq", "user.overlay.opaque", b"y")
    if tree is FOPQ_TOP:
        os.setxattr(root / "opq", "user.fuseoverlayfs.opaque", b"y")
    if tree is OVR_BASE:
        os.setxattr(root / "f", "user.containers.override_stat", b"0:0:0640")
        os.setxattr(root / "d", "user.containers.override_stat", b"0:0:0700")


def res(fn: Callable[[], Any]) -> Any:
    """Run *fn*; its result, or the errno name it failed with."""
    try:
        out = fn()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    return "ok" if out is None else out


def snapshot(root: Path) -> dict[str, Any]:
    """Observable state of a tree: types, permission bits, sizes, contents, links, user xattrs."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            entry: dict[str, Any] = {"mode": oct(st.st_mode)}
            if stat.S_ISREG(st.st_mode):
                data = Path(path).read_bytes()
                entry["data"] = (data.decode("utf-8", "backslashreplace") if len(data) < 200
                                 else hashlib.sha1(data).hexdigest())
                entry["nlink"] = st.st_nlink
            elif stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(path)
            if not stat.S_ISLNK(st.st_mode):
                names = sorted(n for n in os.listxattr(path) if n.startswith("user."))
                if names:
                    entry["xattrs"] = {n: os.getxattr(path, n).decode() for n in names}
            out[rel] = entry
    return out


# -- reading -------------------------------------------------------------------------------------


@scenario()
def readdir_merge(m: Path) -> Any:
    return {"root": sorted(os.listdir(m)), "dir": sorted(os.listdir(m / "dir"))}


@scenario()
def open_plain(m: Path) -> Any:
    return [(m / n).read_text() for n in ("a", "b", "dir/x", "dir/y")]


@scenario()
def noent_plain(m: Path) -> Any:
    return [res(lambda: (m / "nope").read_text()), res(lambda: os.lstat(m / "dir/nope"))]


@scenario()
def readlink(m: Path) -> Any:
    return [os.readlink(m / "link"), (m / "link").read_text(), sorted(os.listdir(m / "dirlink")),
            res(lambda: (m / "broken").read_text())]


@scenario()
def snapshot_initial(m: Path) -> Any:
    return snapshot(m)


# -- opening for write ---------------------------------------------------------------------------


@scenario()
def open_trunc(m: Path) -> Any:
    with open(m / "b", "w") as fh:
        fh.write("new")
    return snapshot(m)


@scenario()
def open_append(m: Path) -> Any:
    fd = os.open(m / "b", os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"more\n")
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, b"again\n")
    os.close(fd)
    return (m / "b").read_text()


@scenario()
def open_creat_excl(m: Path) -> Any:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    first = res(lambda: os.close(os.open(m / "newfile", flags, 0o640)))
    return [first, res(lambda: os.open(m / "newfile", flags)), res(lambda: os.open(m / "b", flags)),
            oct(os.stat(m / "newfile").st_mode)]


@scenario()
def open_rdwr_copyup(m: Path) -> Any:
    fd = os.open(m / "dir/x", os.O_RDWR)
    os.pwrite(fd, b"X", 0)
    data = os.pread(fd, 10, 0)
    os.close(fd)
    return [data.decode(), (m / "dir/x").read_text(), sorted(os.listdir(m / "dir"))]


@scenario()
def truncate(m: Path) -> Any:
    os.truncate(m / "a", 3)
    os.truncate(m / "b", 0)
    os.truncate(m / "dir/x", 100)
    return snapshot(m)


@scenario()
def sparse_copyup(m: Path) -> Any:
    with open(m / "sparse", "wb") as fh:
        fh.seek(50 << 20)
        fh.write(b"end")
    os.chmod(m / "sparse", 0o600)
    st = os.stat(m / "sparse")
    return [st.st_size, st.st_blocks < 1000, oct(st.st_mode)]


# -- names ---------------------------------------------------------------------------------------


@scenario()
def unlink(m: Path) -> Any:
    os.unlink(m / "a")
    os.unlink(m / "dir/x")
    os.unlink(m / "only_top")
    after = [res(lambda: os.lstat(m / "a")), sorted(os.listdir(m)), sorted(os.listdir(m / "dir"))]
    (m / "a").write_text("recreated")
    return [after, (m / "a").read_text(), res(lambda: os.unlink(m / "nope"))]


@scenario()
def rmdir(m: Path) -> Any:
    out = [res(lambda: os.rmdir(m / "dir")), res(lambda: os.rmdir(m / "empty")),
           res(lambda: os.rmdir(m / "a"))]
    os.mkdir(m / "empty")
    out.append(sorted(os.listdir(m / "empty")))
    for n in ("x", "y", "sub/deep"):
        os.unlink(m / "dir" / n)
    out.append(res(lambda: os.rmdir(m / "dir/sub")))
    out.append(res(lambda: os.rmdir(m / "dir")))
    out.append(sorted(os.listdir(m)))
    os.mkdir(m / "dir")
    out.append(sorted(os.listdir(m / "dir")))
    return out


@scenario()
def mkdir(m: Path) -> Any:
    os.mkdir(m / "new", 0o750)
    os.mkdir(m / "dir/sub/new2")
    return [res(lambda: os.mkdir(m / "dir")), res(lambda: os.mkdir(m / "a")), snapshot(m)]


@scenario()
def whiteout_recreate_dir(m: Path) -> Any:
    shutil.rmtree(m / "dir")
    os.mkdir(m / "dir")
    (m / "dir/fresh").write_text("f")
    return snapshot(m)


@scenario()
def dir_to_file(m: Path) -> Any:
    shutil.rmtree(m / "dir")
    (m / "dir").write_text("now a file")
    os.unlink(m / "b")
    os.mkdir(m / "b")
    return snapshot(m)


@scenario()
def symlink(m: Path) -> Any:
    os.symlink("dir/x", m / "newlink")
    os.unlink(m / "link")
    os.symlink("b", m / "link")
    return [res(lambda: os.symlink("x", m / "a")), snapshot(m)]


@scenario()
def hard_link(m: Path) -> Any:
    os.link(m / "b", m / "b2")
    os.link(m / "dir/x", m / "x2")
    with open(m / "b2", "a") as fh:
        fh.write("via b2\n")
    out = [os.stat(m / "b").st_nlink, os.stat(m / "b2").st_nlink, (m / "b").read_text(),
           os.stat(m / "x2").st_nlink]
    os.unlink(m / "b")
    out.append(os.stat(m / "b2").st_nlink)
    out.append(res(lambda: os.link(m / "dir", m / "dir2")))
    out.append(res(lambda: os.link(m / "a", m / "only_top")))
    return out


@scenario()
def rename_file(m: Path) -> Any:
    os.rename(m / "b", m / "b-moved")
    os.rename(m / "a", m / "dir/a-moved")
    os.rename(m / "only_top", m / "exe")
    os.rename(m / "dir/x", m / "dir/sub/x")
    return [res(lambda: os.rename(m / "nope", m / "z")), snapshot(m)]


@scenario()
def rename_exdev(m: Path) -> Any:
    """A directory from a lower layer moved: the kernel says EXDEV and mv copies; either way the
    tree must end up the same."""
    move(m / "dir", m / "moved")
    move(m / "empty", m / "moved/empty2")
    (m / "moved/x").write_text("changed after move")
    return snapshot(m)


def move(src: Path, dst: Path) -> None:
    """``mv``: rename, or copy and delete on EXDEV."""
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.copytree(src, dst, symlinks=True)
        shutil.rmtree(src)


@scenario()
def rename_new_dir(m: Path) -> Any:
    os.makedirs(m / "n1/n2")
    (m / "n1/n2/f").write_text("f")
    os.rename(m / "n1", m / "n3")
    return [res(lambda: os.rename(m / "n3", m / "dir")), res(lambda: os.rename(m / "n3", m / "a")),
            res(lambda: os.rename(m / "a", m / "n3")), snapshot(m)]


@scenario()
def rename_over_empty_lower_dir(m: Path) -> Any:
    os.makedirs(m / "n1")
    (m / "n1/f").write_text("f")
    os.rename(m / "n1", m / "empty")
    return snapshot(m)


@scenario()
def rename_over_whiteout(m: Path) -> Any:
    shutil.rmtree(m / "dir")
    os.makedirs(m / "n1")
    (m / "n1/f").write_text("f")
    os.rename(m / "n1", m / "dir")
    return snapshot(m)


@scenario()
def rename_hard_link(m: Path) -> Any:
    os.link(m / "b", m / "b2")
    os.rename(m / "b", m / "b3")
    return [os.stat(m / "b3").st_nlink, snapshot(m)]


@scenario()
def rename_mass(m: Path) -> Any:
    for i in range(50):
        (m / f"f{i}").write_text(str(i))
    for i in range(50):
        os.rename(m / f"f{i}", m / f"g{i}")
    for i in range(0, 50, 2):
        os.rename(m / f"g{i}", m / "dir" / f"h{i}")
    return snapshot(m)


@scenario()
def mknod_fifo_socket(m: Path) -> Any:
    import socket

    os.mkfifo(m / "fifo", 0o644)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(m / "sock"))
    sock.close()
    modes = [stat.S_ISFIFO(os.lstat(m / "fifo").st_mode),
             stat.S_ISSOCK(os.lstat(m / "sock").st_mode)]
    os.unlink(m / "fifo")
    os.unlink(m / "sock")
    return [modes, sorted(os.listdir(m))]


# -- metadata ------------------------------------------------------------------------------------


@scenario()
def chmod(m: Path) -> Any:
    os.chmod(m / "a", 0o600)
    os.chmod(m / "dir", 0o700)
    os.chmod(m / "dir/sub/deep", 0o4711)
    return snapshot(m)


@scenario()
def utimes_ns(m: Path) -> Any:
    os.utime(m / "a", ns=(1_000_000_123, 2_000_000_456))
    os.utime(m / "dir", ns=(3_000_000_001, 4_000_000_002))
    os.utime(m / "link", ns=(5_000_000_003, 6_000_000_004), follow_symlinks=False)
    sts = [os.lstat(m / n) for n in ("a", "dir", "link")]
    return [(st.st_atime_ns, st.st_mtime_ns) for st in sts]


@scenario()
def xattrs(m: Path) -> Any:
    os.setxattr(m / "a", "user.one", b"1")
    os.setxattr(m / "dir/x", "user.two", b"2")
    out = [os.getxattr(m / "a", "user.one").decode(),
           res(lambda: os.getxattr(m / "b", "user.nope")),
           res(lambda: os.removexattr(m / "b", "user.nope"))]
    os.removexattr(m / "a", "user.one")
    out.append(sorted(n for n in os.listxattr(m / "a") if n.startswith("user.")))
    out.append(res(lambda: os.setxattr(m / "a", "user.x", b"v", os.XATTR_REPLACE)))
    out.append(snapshot(m))
    return out


@scenario()
def inode_stable_copyup(m: Path) -> Any:
    before = {n: os.stat(m / n).st_ino for n in ("a", "b", "dir", "dir/x")}
    (m / "b").write_text("changed")
    os.chmod(m / "dir/x", 0o600)
    (m / "dir/new").write_text("n")
    after = {n: os.stat(m / n).st_ino for n in ("a", "b", "dir", "dir/x")}
    return [before == after, os.stat(m).st_dev == os.stat(m / "dir/x").st_dev]


@scenario()
def fallocate_punch(m: Path) -> Any:
    with open(m / "big", "wb") as fh:
        fh.write(b"x" * (1 << 20))
    fd = os.open(m / "big", os.O_RDWR)
    os.posix_fallocate(fd, 0, 4 << 20)
    size = os.fstat(fd).st_size
    os.fsync(fd)
    os.close(fd)
    return [size, os.statvfs(m).f_bsize > 0]


@scenario(plain=False)
def statfs(m: Path) -> Any:
    sv = os.statvfs(m)
    return [sv.f_namemax, sv.f_blocks > 0]


# -- whiteout formats in lower layers ------------------------------------------------------------

WH_TOP: Tree = {
    "dir/": None,
    "dir/.wh.x": "",
    ".wh.b": "",
    "opq/": None,
    "opq/.wh..wh..opq": "",
    "opq/new": "n",
}
WH_BASE: Tree = {
    "a": "a",
    "b": "b",
    "dir/": None,
    "dir/x": "x",
    "dir/keep": "k",
    "opq/": None,
    "opq/old": "o",
}


@scenario(WH_TOP, WH_BASE, plain=False, oracle="fuse-overlayfs")
def whiteout_files_lower(m: Path) -> Any:
    """``.wh.NAME`` and ``.wh..wh..opq`` in a lower layer (OCI layer format)."""
    return snapshot(m)


OPQ_TOP: Tree = {"opq/": None, "opq/new": "n", "gone": ("whiteout",)}
OPQ_BASE: Tree = {"opq/": None, "opq/old": "o", "gone": "g", "stay": "s"}


@scenario(OPQ_TOP, OPQ_BASE, plain=False)
def whiteout_chardev_xattr_lower(m: Path) -> Any:
    """Kernel format in a lower layer: 0:0 char device and ``user.overlay.opaque``."""
    return snapshot(m)



# -- read-only union and ownership ---------------------------------------------------------------


@scenario(upper=False, plain=False)
def readonly_union(m: Path) -> Any:
    return [
        res(lambda: (m / "a").write_text("x")),
        res(lambda: os.mkdir(m / "new")),
        res(lambda: os.unlink(m / "b")),
        res(lambda: os.chmod(m / "a", 0o600)),
        (m / "a").read_text(),
        sorted(os.listdir(m)),
    ]


def owners(m: Path) -> Any:
    return {n: (os.lstat(m / n).st_uid, os.lstat(m / n).st_gid) for n in ("a", "dir", "dir/x")}


@scenario(plain=False, oracle="fuse-overlayfs", extra="squash_to_root")
def squash_to_root(m: Path) -> Any:
    return owners(m)


@scenario(plain=False, oracle="fuse-overlayfs", extra="squash_to_uid=7,squash_to_gid=8")
def squash_to_uid(m: Path) -> Any:
    return owners(m)


OVR_BASE: Tree = {"f": "data", "d/": None}


@scenario(OVR_BASE, plain=False, oracle="expect",
          expect=[[0, 0, "0o100640"], [0, 0, "0o40700"], [0, 0, "0o100604"], [0, 0]])
def override_stat(m: Path) -> Any:
    """``user.containers.override_stat`` (written by containers/storage) wins over the real mode
    and owner; chmod and chown through the mount update it.  Only ids mapped in a one-id user
    namespace are usable here; tests/fuse_overlay/test_fo_pure.py covers other ids."""
    def show(name: str) -> list[Any]:
        st = os.lstat(m / name)
        return [st.st_uid, st.st_gid, oct(st.st_mode)]

    out = [show("f"), show("d")]
    os.chmod(m / "f", 0o604)
    out.append(show("f"))
    os.chown(m / "f", 0, -1)
    out.append(show("f")[:2])
    return out


# -- big files, mmap, concurrency ----------------------------------------------------------------


@scenario()
def large_file_over_4g(m: Path) -> Any:
    with open(m / "b", "r+b") as fh:  # a lower file, copied up, then grown past 4 GiB
        fh.seek(5 << 30)
        fh.write(b"far")
    with open(m / "b", "rb") as fh:
        head = fh.read(8)
        fh.seek(5 << 30)
        tail = fh.read()
    return [os.stat(m / "b").st_size, head.decode(), tail.decode()]


@scenario()
def mmap_shared_write(m: Path) -> Any:
    import mmap

    with open(m / "dir/x", "r+b") as fh:
        with mmap.mmap(fh.fileno(), 0) as mm:
            mm[0:1] = b"M"
            mm.flush()
    with open(m / "new", "w+b") as fh:
        fh.truncate(8192)
        with mmap.mmap(fh.fileno(), 8192) as mm:
            mm[4096:4100] = b"page"
    return [(m / "dir/x").read_text(), (m / "new").read_bytes()[4096:4100].decode()]


@scenario()
def concurrent_writers_readers(m: Path) -> Any:
    """Parallel writers, readers and renames; the final tree is deterministic."""
    import threading

    errors: list[str] = []

    def writer(k: int) -> None:
        try:
            d = m / f"w{k}"
            d.mkdir()
            for i in range(40):
                (d / f"f{i}").write_text(f"{k}:{i}\n" * 50)
                if i % 4 == 0:
                    os.rename(d / f"f{i}", d / f"r{i}")
        except OSError as exc:
            errors.append(repr(exc))

    def reader() -> None:
        try:
            for _ in range(30):
                for name in ("a", "b", "dir/x", "dir/sub/deep"):
                    (m / name).read_bytes()
                os.listdir(m)
        except OSError as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [errors, snapshot(m)]


@scenario()
def rename_noreplace_touch_omit_punch(m: Path) -> Any:
    """``mv -n`` (renameat2 RENAME_NOREPLACE), ``touch -a`` (UTIME_OMIT), ``fallocate -p``."""
    import subprocess

    os.utime(m / "b", ns=(7_000_000_001, 8_000_000_002))
    subprocess.run(["mv", "-n", str(m / "only_top"), str(m / "a")], capture_output=True)
    subprocess.run(["touch", "-a", "-d", "@5", str(m / "b")], check=True)
    with open(m / "holey", "wb") as fh:
        fh.write(b"y" * (1 << 20))
    subprocess.run(["fallocate", "-p", "-o", "4096", "-l", "65536", str(m / "holey")], check=True)
    data = (m / "holey").read_bytes()
    st = os.stat(m / "b")
    return [(m / "a").read_text(), (m / "only_top").exists(), st.st_atime_ns, st.st_mtime_ns,
            len(data), data[4096:4100].hex(), data[:4].decode()]


# -- options with an effect on the union ---------------------------------------------------------

RO_UPPER: Tree = {"a": "upper a\n", "only_upper": "u\n", "dir/": None, "dir/x": ("whiteout",)}


@scenario(plain=False, extra="ro", upper_tree=RO_UPPER)
def readonly_with_upper(m: Path) -> Any:
    """``-o ro`` with an upperdir: the upper layer is part of the union, nothing can change."""
    return [
        (m / "a").read_text(),
        (m / "only_upper").read_text(),
        sorted(os.listdir(m)),
        sorted(os.listdir(m / "dir")),
        res(lambda: (m / "b").write_text("x")),
        res(lambda: os.open(m / "a", os.O_RDWR)),
        res(lambda: os.mkdir(m / "new")),
        res(lambda: os.unlink(m / "only_upper")),
        res(lambda: os.setxattr(m / "a", "user.k", b"v")),
        res(lambda: os.utime(m / "a", ns=(1, 1))),
    ]


def posix_acl(*entries: tuple[int, int, int]) -> bytes:
    """The ``system.posix_acl_*`` xattr value: version 2, then (tag, perm, id) per entry."""
    import struct

    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


# tags: USER_OBJ 1, USER 2, GROUP_OBJ 4, GROUP 8, MASK 0x10, OTHER 0x20; id -1 where unused
ACL_READ_FOR_ROOT = posix_acl((1, 6, 0xFFFFFFFF), (2, 4, 0), (4, 4, 0xFFFFFFFF),
                              (0x10, 5, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF))


def acl_observation(m: Path) -> Any:
    def get(path: Path, name: str) -> Any:
        return res(lambda: os.getxattr(path, name).hex())

    out = [res(lambda: os.setxattr(m / "a", "system.posix_acl_access", ACL_READ_FOR_ROOT)),
           get(m / "a", "system.posix_acl_access"), oct(os.stat(m / "a").st_mode),
           res(lambda: os.setxattr(m / "dir", "system.posix_acl_default", ACL_READ_FOR_ROOT))]
    (m / "dir/new").write_text("n")
    out += [get(m / "dir/new", "system.posix_acl_access"), oct(os.stat(m / "dir/new").st_mode)]
    return out


@scenario(plain=False)
def acl_on_by_default(m: Path) -> Any:
    """POSIX ACLs are on unless ``noacl`` (fuse-overlayfs asks libfuse 3 for FUSE_CAP_POSIX_ACL):
    a user namespace's kernel refuses ``system.posix_acl_*`` on a FUSE mount without it."""
    return acl_observation(m)


@scenario(plain=False, oracle="fuse-overlayfs", extra="noacl")
def acl_off_with_noacl(m: Path) -> Any:
    return acl_observation(m)


# -- opacity, access, links and holes ------------------------------------------------------------

FOPQ_TOP: Tree = {"opq/": None, "opq/new": "n"}
FOPQ_BASE: Tree = {"opq/": None, "opq/old": "o", "opq/sub/": None, "opq/sub/f": "f", "keep": "k"}


@scenario(FOPQ_TOP, FOPQ_BASE, plain=False, oracle="fuse-overlayfs")
def opaque_fuseoverlayfs_xattr_lower(m: Path) -> Any:
    """``user.fuseoverlayfs.opaque=y`` (what fuse-overlayfs writes in a user namespace) on a
    lower directory hides the directories below it."""
    return [snapshot(m), res(lambda: os.lstat(m / "opq/old")), sorted(os.listdir(m / "opq"))]


@scenario()
def access(m: Path) -> Any:
    os.chmod(m / "b", 0o400)
    (m / "new").write_text("n")
    names = ("a", "b", "exe", "dir", "dir/x", "new", "link", "broken", "nope", "dir/nope")
    modes = {"F": os.F_OK, "R": os.R_OK, "W": os.W_OK, "X": os.X_OK, "RWX": 7}
    return {n: {k: os.access(m / n, v) for k, v in modes.items()} for n in names}


@scenario()
def mmap_hard_linked(m: Path) -> Any:
    """A shared writable mapping of a file that has another name; the other name sees it."""
    import mmap

    os.link(m / "dir/x", m / "x2")
    with open(m / "x2", "r+b") as fh:
        mapped = res(lambda: mmap.mmap(fh.fileno(), 0))
        if isinstance(mapped, mmap.mmap):
            mapped[0:1] = b"Z"
            mapped.flush()
            mapped.close()
            mapped = "ok"
    with open(m / "dir/x", "rb") as fh:
        private = mmap.mmap(fh.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
        seen = private[:]
        private.close()
    return [mapped, (m / "dir/x").read_text(), seen.decode(), os.stat(m / "dir/x").st_nlink]


def upper_tree(m: Path) -> list[Any]:
    """What the upper directory holds: (path, kind), whiteouts of either format named so."""
    upper = m.parent / "u"
    out = []
    for dirpath, dirnames, filenames in os.walk(upper):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            whiteout = (stat.S_ISCHR(st.st_mode) and st.st_rdev == 0) or name.startswith(".wh.")
            kind = "whiteout" if whiteout else stat.filemode(st.st_mode)[0]
            out.append((os.path.relpath(path, upper), kind))
    return out


@scenario(plain=False)
def no_stray_whiteouts(m: Path) -> Any:
    """Unlink and rmdir of upper-only names leave no whiteouts; lower names get exactly one."""
    (m / "newfile").write_text("n")
    (m / "dir/newfile").write_text("n")
    os.makedirs(m / "n1/n2/n3")
    os.makedirs(m / "dir/sub/new/deeper")
    (m / "n1/n2/f").write_text("f")
    os.unlink(m / "newfile")
    os.unlink(m / "dir/newfile")
    os.unlink(m / "n1/n2/f")
    for d in ("n1/n2/n3", "n1/n2", "n1", "dir/sub/new/deeper", "dir/sub/new"):
        os.rmdir(m / d)
    os.unlink(m / "b")
    return [upper_tree(m), sorted(os.listdir(m))]


SPARSE_BASE: Tree = {"sparse": ("sparse", 64 << 20, "tail"), "small": "s"}


@scenario(SPARSE_BASE, plain=False)
def sparse_lower_copyup(m: Path) -> Any:
    """Copy-up of a lower sparse file keeps its holes: as few blocks after as before."""
    before = os.stat(m / "sparse")
    os.chmod(m / "sparse", 0o640)  # a metadata change copies the whole file up
    with open(m / "sparse", "r+b") as fh:
        fh.seek(1 << 20)
        fh.write(b"mid")
    after = os.stat(m / "sparse")
    upper = os.stat(m.parent / "u" / "sparse")
    with open(m / "sparse", "rb") as fh:
        fh.seek(64 << 20)
        tail = fh.read()
    return [before.st_size, after.st_size, before.st_blocks, after.st_blocks, upper.st_blocks,
            tail.decode()]


@scenario(oracle="plain")
def rename_lower_direct(m: Path) -> Any:
    """``rename(2)`` itself (no ``mv`` fallback) on lower files and directories: fuse_overlay
    does better than the EXDEV of the kernel and of fuse-overlayfs for directories, so a plain
    directory is the oracle."""
    out = [res(lambda: os.rename(m / "b", m / "b-moved")),
           res(lambda: os.rename(m / "dir", m / "dir-moved")),
           res(lambda: os.rename(m / "empty", m / "dir-moved/empty2")),
           res(lambda: os.rename(m / "dir-moved/sub", m / "sub-moved"))]
    return [out, snapshot(m)]


@scenario(plain=False)
def unlink_open_file(m: Path) -> Any:
    """An open file unlinked stays usable through its descriptor and leaves nothing behind in
    the upper directory (no ``.fuse_hidden`` file: libfuse's ``hard_remove``)."""
    (m / "tmpfile").write_text("before\n")
    fd = os.open(m / "tmpfile", os.O_RDWR)
    os.unlink(m / "tmpfile")
    os.pwrite(fd, b"after!\n", 0)
    seen = [os.pread(fd, 20, 0).decode(), upper_tree(m), sorted(os.listdir(m))]
    os.close(fd)
    return [*seen, upper_tree(m)]


@scenario(plain=False)
def fstat_unlinked_open_file(m: Path) -> Any:
    (m / "tmpfile").write_text("before\n")
    fd = os.open(m / "tmpfile", os.O_RDWR)
    os.unlink(m / "tmpfile")
    try:
        return [res(lambda: os.fstat(fd).st_size), res(lambda: os.fstat(fd).st_nlink)]
    finally:
        os.close(fd)
