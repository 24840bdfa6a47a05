"""The on-disk store: the single owner of every path under ``$SANDBOX_ROOT``.

Layout (see DESIGN.md "On disk")::

    $SANDBOX_ROOT/
      version, oci-layout, index.json, blobs/sha256/<hex>   content store (an OCI image layout;
                                                            blobs/sha512/<hex> for sha512 ones)
      layers/<chain-hex>/{diff/, meta.json}                 unpacked layers, shared
      init-layer/{dev/, proc/, sys/, etc/{hosts, hostname, resolv.conf}}
                                                            the runtime's mount points, a
                                                            lower layer over every image
      containers/<id>/...                                   one directory per container
      mnt/                                                  where kernel overlayfs mounts a
                                                            container's root, each in the
                                                            container's own mount namespace
      volumes/<name>/
      tmp/                                                  staging; renamed into place
      locks/<name>.lock                                     flock(2) files

Every write goes to ``tmp/`` first and is renamed into place; processes coordinate with ``flock``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import sys
import time

from sandbox import _json as json
from sandbox.errors import DigestMismatch, SpecError, StoreError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO


__all__ = ["Store", "FileLock", "default_root", "rm_rf", "disk_usage", "unlink_missing_ok",
           "STORE_VERSION", "INIT_LAYER_DIRS", "INIT_LAYER_FILES"]

STORE_VERSION = "1"
_CHUNK = 1 << 20
_TMP_STALE_AGE = 24 * 3600  # a tmp entry without a live creator is stale; this is the fallback


def _pid_alive(pid: int) -> bool:
    """Is ``pid`` running? A zombie is not: a killed process whose parent died stays one
    until PID 1 reaps it, and some PID 1s (in containers, CI sandboxes) never do."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        state = read_bytes(f"/proc/{pid}/stat").rpartition(b")")[2].split()[:1]
    except OSError:
        return True
    return state != [b"Z"]


# What ``Store.init_layer`` holds: what the runtime mounts over (runtime.plan).
INIT_LAYER_DIRS = ("dev", "proc", "sys", "etc")
INIT_LAYER_FILES = ("etc/hosts", "etc/hostname", "etc/resolv.conf")


def _tmp_prefix() -> str:
    """Temp names start with the creator's pid, so ``clean_tmp`` can tell stale from in use."""
    return f"p{os.getpid()}-"


def disk_usage(path: str) -> int:
    """Bytes used by ``path`` (allocated blocks, hard links counted once; unreadable dirs
    are skipped, as ``du`` does with a warning)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_nlink > 1:
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
            if stat.S_ISDIR(st.st_mode):
                stack.append(entry.path)
    return total


def default_root() -> str:
    """``$SANDBOX_ROOT``, else ``$XDG_DATA_HOME/sandbox``, else ``~/.local/share/sandbox``."""
    root = os.environ.get("SANDBOX_ROOT")
    if root:
        return os.path.abspath(root)
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                           "share")
    return os.path.join(data, "sandbox")


_HEX_LENGTHS = {"sha256": 64, "sha512": 128}  # the algorithms the OCI image spec registers


def _split(digest: str) -> tuple[str, str]:
    """(algorithm, hex) of a digest the store can hold, else ``StoreError``."""
    algo, _, hexpart = digest.partition(":")
    length = _HEX_LENGTHS.get(algo)
    if length is None:
        raise StoreError(f"unsupported digest algorithm {algo!r} in {digest[:80]!r}",
                         hint="sha256 and sha512 are supported")
    if len(hexpart) != length or any(c not in "0123456789abcdef" for c in hexpart):
        raise StoreError(f"invalid digest {digest[:80]!r}",
                         hint=f"expected {algo}:<{length} lowercase hex digits>")
    return algo, hexpart


def _hex(digest: str) -> str:
    return _split(digest)[1]


def _on_rm_error(func: Any, path: str, exc: Any) -> None:
    """Make the parent (and the path) writable and retry once (pytest's ``rm_rf`` approach);
    when that cannot help (the entry belongs to another uid), the original error stands."""
    if isinstance(exc, tuple):  # onerror's exc_info (Python 3.11)
        exc = exc[1]
    if isinstance(exc, FileNotFoundError):
        return
    changed = False
    for target in (os.path.dirname(path), path):
        try:
            st = os.lstat(target)
            if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o700 != 0o700:
                os.chmod(target, stat.S_IMODE(st.st_mode) | 0o700)
                changed = True
        except OSError:
            continue
    if not changed:
        raise exc
    name = getattr(func, "__name__", "")
    if name in ("rmdir", "unlink", "remove"):
        try:
            func(path)
        except FileNotFoundError:
            pass
    elif name in ("open", "scandir", "listdir", "lstat"):
        _rmtree(path)


class FileLock:
    """An ``flock`` held for a ``with`` block (a class: ``contextlib`` would be an import of
    every ``sandbox run``, for the two locks it takes).

    ``with FileLock(path):`` creates ``path`` if needed (mode 0600), blocks until the lock
    is ours, and lets it go explicitly on exit: a forked copy of the descriptor must not keep
    it."""

    __slots__ = ("path", "shared", "_fd")

    def __init__(self, path: str, *, shared: bool = False) -> None:
        self.path = path
        self.shared = shared
        self._fd = -1

    def __enter__(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def __exit__(self, *_exc: object) -> None:
        fd, self._fd = self._fd, -1
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


_FS_IOC_GETFLAGS, _FS_IOC_SETFLAGS, _FS_TOPDIR_FL = 0x80086601, 0x40086602, 0x00020000


def _spread_subdirectories(path: str) -> None:
    """Mark ``path`` a top of directory hierarchies (``chattr +T``): ext4 then spreads its
    subdirectories over block groups instead of packing them into its own. Each container
    directory and its layer are made and removed in seconds; packed into one group, the inode
    allocator there scans ever more recently freed inodes (ext4 without a journal skips those
    for a minute). Other filesystems refuse the flag, which changes nothing there."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        flags = int.from_bytes(fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(8))[:4], sys.byteorder)
        fcntl.ioctl(fd, _FS_IOC_SETFLAGS, (flags | _FS_TOPDIR_FL).to_bytes(8, sys.byteorder))
    except OSError:
        pass
    finally:
        os.close(fd)


def read_bytes(path: str) -> bytes:
    """A whole small file. ``open(path, "rb").read()`` builds a buffered reader and spends an
    fstat, an isatty and two seeks on it: a dozen files on every ``sandbox run``'s path."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text(path: str, what: str) -> str:
    """A UTF-8 text file the user named (``what``: "env file", "Dockerfile"): one that cannot
    be read, or is not UTF-8 text, is a one-line ``SpecError`` naming it."""
    try:
        data = read_bytes(path)
    except OSError as exc:
        raise SpecError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SpecError(f"{what} {path} is not UTF-8 text (line {line})") from None


def write_bytes(path: str, data: bytes, mode: int = 0o644, *, exclusive: bool = False) -> None:
    """Create (or truncate) ``path`` holding ``data``; as ``read_bytes``, without the io stack."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def unlink_missing_ok(path: str) -> None:
    """``os.unlink`` that lets a path already gone be."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _rmtree(path: str) -> None:
    """``shutil.rmtree`` without importing shutil (it pulls in bz2 and lzma, milliseconds of
    every ``run --rm``): never follows symlinks, retries through ``_on_rm_error``. An empty
    directory (a container's writable layer, often) goes in one ``rmdir``, unlisted."""
    try:
        os.rmdir(path)
        return
    except OSError:
        pass  # not empty (or not ours to remove: the listing below meets that and retries)
    try:
        entries = list(os.scandir(path))
    except OSError as exc:
        _on_rm_error(os.scandir, path, exc)
        return
    for entry in entries:
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        if is_dir:
            _rmtree(entry.path)
            continue
        try:
            os.unlink(entry.path)
        except OSError as exc:
            _on_rm_error(os.unlink, entry.path, exc)
    try:
        os.rmdir(path)
    except OSError as exc:
        _on_rm_error(os.rmdir, path, exc)


def rm_rf(path: str, *, under: str) -> None:
    """Remove ``path`` recursively, chmod-and-retry; refuses anything not below ``under``."""
    real_under = os.path.realpath(under)
    real = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    if os.path.commonpath([real_under, real]) != real_under or real == real_under:
        raise StoreError(f"refusing to remove {path}: not under {under}")
    try:
        st = os.lstat(real)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        _rmtree(real)
    else:
        os.unlink(real)


class Store:
    """Paths, locks and atomic writes under one store root."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = os.path.abspath(os.fspath(root)) if root is not None else default_root()
        self._ready = False

    def __repr__(self) -> str:
        return f"Store({self.root!r})"

    # -- layout -------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @property
    def tmp_dir(self) -> str:
        return self.path("tmp")

    def blob_path(self, digest: str) -> str:
        algo, hexpart = _split(digest)
        return self.path("blobs", algo, hexpart)

    def layer_dir(self, chain_id: str) -> str:
        return self.path("layers", _hex(chain_id))

    def layer_diff(self, chain_id: str) -> str:
        return os.path.join(self.layer_dir(chain_id), "diff")

    def containers_dir(self) -> str:
        return self.path("containers")

    def container_dir(self, container_id: str) -> str:
        if not container_id or "/" in container_id or container_id.startswith("."):
            raise StoreError(f"invalid container id {container_id!r}")
        return self.path("containers", container_id)

    def volume_dir(self, name: str) -> str:
        if not name or "/" in name or name.startswith("."):
            raise StoreError(f"invalid volume name {name!r}")
        return self.path("volumes", name)

    def ensure(self) -> Store:
        """Create the layout (idempotent) and check the store version."""
        if self._ready:
            return self
        try:
            version_file = self.path("version")
            try:
                version = read_bytes(version_file).decode().strip()
            except FileNotFoundError:
                version = None
            if version is not None and version != STORE_VERSION:
                raise StoreError(f"store {self.root} has version {version}, this sandbox "
                                 f"reads version {STORE_VERSION}",
                                 hint="use another --root or upgrade sandbox")
            try:  # one listing, not a mkdir and two stats a directory, on every command
                present = set(os.listdir(self.root))
            except FileNotFoundError:
                present = set()
            for sub in ("blobs/sha256", "layers", "containers", "volumes", "tmp", "locks", "mnt"):
                top = sub.partition("/")[0]
                if top not in present or (top != sub and not os.path.isdir(self.path(sub))):
                    os.makedirs(self.path(sub), mode=0o700, exist_ok=True)
            if version is None:
                _spread_subdirectories(self.path("containers"))
                self.atomic_write(self.path("oci-layout"), b'{"imageLayoutVersion":"1.0.0"}')
                if not os.path.exists(self.path("index.json")):
                    self.atomic_write(self.path("index.json"),
                                      b'{"schemaVersion":2,"manifests":[]}')
                self.atomic_write(version_file, STORE_VERSION.encode() + b"\n")
        except PermissionError as exc:
            raise StoreError(
                f"cannot use store {self.root}: {exc.strerror}",
                hint="pass --root or set SANDBOX_ROOT to a directory you own") from None
        self._ready = True
        return self

    # -- locks --------------------------------------------------------------------------------
    def lock(self, name: str = "store", *, shared: bool = False) -> FileLock:
        """An ``flock`` on ``locks/<name>.lock``; blocks until it is ours."""
        self.ensure()
        return FileLock(self.path("locks", name.replace("/", "_") + ".lock"), shared=shared)

    # -- atomic writes ------------------------------------------------------------------------
    def mkstemp(self, suffix: str = "") -> tuple[int, str]:
        import tempfile

        self.ensure()
        return tempfile.mkstemp(dir=self.tmp_dir, suffix=suffix, prefix=_tmp_prefix())

    def mkdtemp(self, suffix: str = "") -> str:
        import tempfile

        self.ensure()
        return tempfile.mkdtemp(dir=self.tmp_dir, suffix=suffix, prefix=_tmp_prefix())

    def stale_tmp(self, *, max_age: float = _TMP_STALE_AGE) -> list[str]:
        """Entries of ``tmp/`` left by dead processes (interrupted pulls, SIGKILL), or older
        than ``max_age`` seconds when the creator is unknown. Entries of live processes (another
        pytest-xdist worker pulling right now) are never stale."""
        try:
            names = os.listdir(self.tmp_dir)
        except FileNotFoundError:
            return []
        now = time.time()
        stale = []
        for name in names:
            path = os.path.join(self.tmp_dir, name)
            pid_text = name[1:].partition("-")[0] if name.startswith("p") else ""
            if pid_text.isdigit():
                if not _pid_alive(int(pid_text)):
                    stale.append(path)
                continue
            try:
                if now - os.lstat(path).st_mtime > max_age:
                    stale.append(path)
            except FileNotFoundError:
                continue
        return stale

    def clean_tmp(self, *, max_age: float = _TMP_STALE_AGE) -> list[str]:
        """Remove stale ``tmp/`` entries; returns those that could not be removed here (files
        owned by subordinate uids: remove them inside the user namespace)."""
        left = []
        for path in self.stale_tmp(max_age=max_age):
            try:
                self.rm_rf(path)
            except OSError:
                left.append(path)
            else:
                if os.path.lexists(path):
                    left.append(path)
        return left

    def atomic_write(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        """Write ``data`` to ``path`` through a temp file in the same directory and rename."""
        tmp = f"{path}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            write_bytes(tmp, data, 0o600, exclusive=True)
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            unlink_missing_ok(tmp)
            raise

    def write_json(self, path: str, obj: Any) -> None:
        self.atomic_write(path, json.dumps(obj, indent=1, sort_keys=True).encode())

    @staticmethod
    def read_json(path: str) -> Any:
        return json.loads(read_bytes(path))

    def rm_rf(self, path: str) -> None:
        rm_rf(path, under=self.root)

    # -- blobs --------------------------------------------------------------------------------
    def has_blob(self, digest: str) -> bool:
        return os.path.exists(self.blob_path(digest))

    def read_blob(self, digest: str) -> bytes:
        try:
            return read_bytes(self.blob_path(digest))
        except FileNotFoundError:
            raise StoreError(f"blob {digest} is missing from the store",
                             hint="pull the image again") from None

    def open_blob(self, digest: str) -> BinaryIO:
        return open(self.blob_path(digest), "rb")

    def blob_size(self, digest: str) -> int:
        return os.stat(self.blob_path(digest)).st_size

    def put_blob(self, data: bytes) -> str:
        """Store bytes as a blob; returns its digest."""
        import hashlib

        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.has_blob(digest):
            self.ingest_blob(digest, [data], size=len(data))
        return digest

    def blob_lock(self, digest: str) -> FileLock:
        """Held while a blob is fetched, so concurrent pulls download it once."""
        return self.lock(f"blob-{_hex(digest)}")

    def ingest_blob_once(self, digest: str, chunks: Iterable[bytes], *,
                         size: int | None = None) -> None:
        """``ingest_blob`` under the blob's lock, skipped (``chunks`` never read, so nothing is
        downloaded) when another process stored the blob while this one waited."""
        with self.blob_lock(digest):
            if self.has_blob(digest):
                return
            self.ingest_blob(digest, chunks, size=size)

    def ingest_blob(self, digest: str, chunks: Iterable[bytes], *, size: int | None = None) -> None:
        """Stream ``chunks`` to a temp file, verifying size and digest, then rename into place.

        Safe to call concurrently for one digest: whichever rename lands last wins with the same
        content; a reader never sees a partial blob.
        """
        import hashlib

        target = self.blob_path(digest)
        algo = digest.partition(":")[0]
        if algo != "sha256":
            os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
        fd, tmp = self.mkstemp(suffix=".blob")
        h = hashlib.new(algo)
        written = 0
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    h.update(chunk)
                    written += len(chunk)
                    if size is not None and written > size:
                        raise DigestMismatch(f"blob {digest} is larger than the {size} bytes "
                                             "announced")
                    f.write(chunk)
            if size is not None and written != size:
                raise DigestMismatch(f"blob {digest} is truncated: got {written} of {size} bytes")
            actual = f"{algo}:" + h.hexdigest()
            if actual != digest:
                raise DigestMismatch(f"blob content hashes to {actual}, expected {digest}")
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except OSError as exc:
            unlink_missing_ok(tmp)
            if exc.errno == errno.ENOSPC:
                raise StoreError(f"no space left on the device of {self.root} while writing "
                                 f"{digest}", hint="free some space, then retry") from None
            raise
        except BaseException:
            unlink_missing_ok(tmp)
            raise

    def ingest_file(self, src: BinaryIO) -> tuple[str, int]:
        """Copy an already-open stream into the store; returns (digest, size)."""
        digest, size, _ = self.ingest_new_file(src)
        return digest, size

    def ingest_new_file(self, src: BinaryIO) -> tuple[str, int, bool]:
        """``ingest_file``, also saying whether the store did not have that blob yet."""
        import hashlib

        fd, tmp = self.mkstemp(suffix=".blob")
        h = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    f.write(chunk)
            digest = "sha256:" + h.hexdigest()
            new = not self.has_blob(digest)
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.blob_path(digest))
            return digest, size, new
        except OSError as exc:
            unlink_missing_ok(tmp)
            if exc.errno == errno.ENOSPC:
                raise StoreError(f"no space left on the device of {self.root}",
                                 hint="free some space, then retry") from None
            raise
        except BaseException:
            unlink_missing_ok(tmp)
            raise

    def iter_blobs(self) -> Iterator[str]:
        for algo, length in _HEX_LENGTHS.items():
            try:
                names = os.listdir(self.path("blobs", algo))
            except FileNotFoundError:
                continue
            for name in names:
                if len(name) == length:
                    yield f"{algo}:{name}"

    # -- index.json ---------------------------------------------------------------------------
    def load_index(self) -> dict[str, Any]:
        try:
            index: dict[str, Any] = self.read_json(self.path("index.json"))
        except FileNotFoundError:
            return {"schemaVersion": 2, "manifests": []}
        except ValueError:
            raise StoreError(f"{self.path('index.json')} is not valid JSON",
                             hint="restore it or remove the store") from None
        index.setdefault("manifests", [])
        return index

    def save_index(self, index: dict[str, Any]) -> None:
        """Write index.json atomically; callers hold ``lock("index")``."""
        self.ensure()
        self.write_json(self.path("index.json"), index)

    # -- layers -------------------------------------------------------------------------------
    def init_layer(self) -> str:
        """``init-layer/``: the paths the runtime mounts over, as empty directories and files
        (Docker's ``<id>-init`` layer, one per store): laid over an image's layers, the
        container's ``/etc/hosts`` and the like need not be created in its writable layer,
        an inode allocation and a copy-up of ``/etc`` per container."""
        path = self.path("init-layer")
        if os.path.isdir(path):
            return path
        tmp = self.mkdtemp("-init")
        try:
            os.chmod(tmp, 0o755)
            for name in INIT_LAYER_DIRS:
                os.mkdir(os.path.join(tmp, name), 0o755)
            for name in INIT_LAYER_FILES:
                os.close(os.open(os.path.join(tmp, name), os.O_WRONLY | os.O_CREAT, 0o644))
            os.rename(tmp, path)
        except OSError:
            _rmtree(tmp)
            if not os.path.isdir(path):  # not made by a concurrent process either
                raise
        return path

    def has_layer(self, chain_id: str) -> bool:
        return os.path.exists(os.path.join(self.layer_dir(chain_id), "meta.json"))

    def iter_layers(self) -> Iterator[str]:
        try:
            names = os.listdir(self.path("layers"))
        except FileNotFoundError:
            return
        for name in names:
            if len(name) == 64:
                yield "sha256:" + name
            elif len(name) == 128:  # a first layer whose diff id is sha512
                yield "sha512:" + name

    def blobs_size(self, digests: Iterable[str]) -> int:
        total = 0
        for digest in digests:
            try:
                total += self.blob_size(digest)
            except OSError:
                pass
        return total

    def layer_size(self, chain_id: str) -> int:
        """Bytes of an unpacked layer: from its meta.json (recorded at unpack), else ``du``."""
        try:
            meta = self.read_json(os.path.join(self.layer_dir(chain_id), "meta.json"))
            return int(meta["size"])
        except (OSError, ValueError, KeyError, TypeError):
            return disk_usage(self.layer_diff(chain_id))

    # -- garbage-collection roots -------------------------------------------------------------
    def set_gc_root(self, name: str, blobs: Iterable[str]) -> None:
        """Keep ``blobs`` alive through ``rmi``/prune while the root ``name`` exists (the build
        cache holds its layers this way; the images index is the other root)."""
        directory = self.path("gc-roots")
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.atomic_write(os.path.join(directory, name.replace("/", "_") + ".json"),
                          json.dumps(sorted(set(blobs))).encode())

    def remove_gc_roots(self, prefix: str) -> int:
        directory = self.path("gc-roots")
        try:
            names = [n for n in os.listdir(directory) if n.startswith(prefix)]
        except FileNotFoundError:
            return 0
        for name in names:
            unlink_missing_ok(os.path.join(directory, name))
        return len(names)

    def gc_root_blobs(self) -> set[str]:
        found: set[str] = set()
        directory = self.path("gc-roots")
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return found
        for name in names:
            try:
                found.update(self.read_json(os.path.join(directory, name)))
            except (OSError, ValueError, TypeError):
                pass
        return found

    def iter_containers(self) -> Iterator[str]:
        try:
            names = sorted(os.listdir(self.containers_dir()))
        except FileNotFoundError:
            return
        for name in names:
            if len(name) == 64 and os.path.exists(os.path.join(self.containers_dir(), name,
                                                               "config.json")):
                yield name
