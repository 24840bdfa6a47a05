"""Storage drivers: how a container's root filesystem is assembled.

In order of preference (DESIGN decision 3): ``overlay`` (kernel overlayfs mounted inside the user
namespace, Linux 5.11+ with ``userxattr``), ``fuse`` (our ``fuse_overlay``), ``copy`` (the layers
flattened into a private directory). ``--storage-driver`` or ``SANDBOX_STORAGE_DRIVER`` overrides
the choice.

Both probes are real: each mounts its union once in a fresh user and mount namespace, the way a
container will. Their answers are cached in the store (``driver-probe.json``) so that a run pays
nothing but reading one small file and a few ``stat`` calls: both answers hold for a kernel
release, the FUSE one also for a :func:`_fuse_fingerprint` (what installing libfuse, mfusepy or
the fuse module changes), so that ``sandbox info`` shows the current reason and a machine that
was fixed is noticed. A ``fuse`` that is requested but failed before is probed again.
"""

from __future__ import annotations

import os
import sys

from sandbox import _json as json
from sandbox._record import record
from sandbox.errors import SandboxError, UserNamespaceUnavailable
from sandbox.store import Store, read_bytes

TYPE_CHECKING = False  # no typing import on the run path (see sandbox._record)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["DRIVERS", "DriverChoice", "select_driver", "probe_overlay", "probe_fuse"]

DRIVERS = ("overlay", "fuse", "copy")
_PROBE_FILE = "probe"  # the lower file the FUSE probe reads through the mount


@record
class DriverChoice:
    """The storage driver chosen, why, and what the probes found."""

    name: str
    reason: str
    probes: dict[str, str]


def _make_dirs(base: str) -> tuple[str, str, str, str]:
    lower, upper, work, mnt = (os.path.join(base, sub) for sub in ("l", "u", "w", "m"))
    for d in (lower, upper, work, mnt):
        os.makedirs(d, exist_ok=True)
    return lower, upper, work, mnt


def _remove_in_ns(base: str) -> None:
    from sandbox.store import rm_rf

    try:
        rm_rf(base, under=os.path.dirname(base))
    except OSError:
        pass  # the caller removes what is left from outside


def _probe_overlay_in_ns(base: str) -> str:
    """Runs inside a fresh user+mount namespace: try a real overlay mount."""
    from sandbox import _syscalls as sc

    try:
        lower, upper, work, mnt = _make_dirs(base)
        sc.mount(None, "/", None, sc.MS_PRIVATE | sc.MS_REC)
        opts = f"lowerdir={lower},upperdir={upper},workdir={work},userxattr"
        sc.mount("overlay", mnt, "overlay", 0, opts)
        sc.umount2(mnt, sc.MNT_DETACH)
    finally:
        _remove_in_ns(base)
    return "ok"


def _probe_fuse_in_ns(base: str) -> str:
    """Runs inside a fresh user+mount namespace: mount ``fuse_overlay`` as a container's C
    process does, read a lower file through it, write one (which must land in the upper)."""
    from sandbox import _syscalls as sc
    from sandbox.drivers.fuse import mount_fuse, unmount_fuse

    try:
        lower, upper, work, mnt = _make_dirs(base)
        with open(os.path.join(lower, _PROBE_FILE), "w") as f:
            f.write("lower\n")
        sc.mount(None, "/", None, sc.MS_PRIVATE | sc.MS_REC)
        log_path = os.path.join(base, "server.log")
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            pid = mount_fuse([lower], mnt, upper, work, stderr_fd=log, timeout=30)
        except OSError as exc:
            return f"fuse_overlay could not mount: {_last_line(log_path) or exc.strerror}"
        finally:
            os.close(log)
        try:
            return _exercise(mnt, upper)
        finally:
            unmount_fuse(mnt, pid)
    finally:
        _remove_in_ns(base)


def _exercise(mnt: str, upper: str) -> str:
    try:
        with open(os.path.join(mnt, _PROBE_FILE)) as f:
            if f.read() != "lower\n":
                return "fuse_overlay mounted but did not serve the lower layer's file"
        with open(os.path.join(mnt, "written"), "w") as f:
            f.write("upper\n")
    except OSError as exc:
        return f"fuse_overlay mounted but failed to serve: {exc.strerror}"
    if not os.path.exists(os.path.join(upper, "written")):
        return "fuse_overlay mounted but a write did not reach the upper directory"
    return "ok"


def _last_line(path: str) -> str:
    """The server's own one-line message (the last line it wrote), without its prefix."""
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ""
    line = lines[-1] if lines else ""
    return line.removeprefix("fuse-overlay: ")[:300]


def _probe(func: Callable[[str], str], base: str, what: str) -> str:
    """Run a probe in a fresh user namespace; its answer, or why it could not mount.

    A user namespace that cannot be made at all (maps refused) is raised, not a probe result:
    it is not a fact about the driver to remember, and nothing would run anyway.
    """
    from sandbox.runtime.idmap import MapError, map_failure
    from sandbox.runtime.userns import run_in_userns

    try:
        return run_in_userns(func, base)
    except MapError as exc:
        raise map_failure(exc) from None
    except UserNamespaceUnavailable:
        raise
    except OSError as exc:
        return f"{what} in a user namespace failed: {os.strerror(exc.errno or 0)}"
    except SandboxError as exc:
        return exc.one_line()
    finally:
        if os.path.lexists(base):
            from sandbox.store import rm_rf

            try:
                rm_rf(base, under=os.path.dirname(base))
            except (OSError, SandboxError):
                pass


def probe_overlay(store: Store) -> str:
    """``ok`` or why kernel overlayfs cannot be mounted in a user namespace here."""
    return _probe(_probe_overlay_in_ns, store.mkdtemp(suffix=".probe"), "overlay mount")


def probe_fuse(store: Store | None = None) -> str:
    """``ok`` or why the ``fuse`` driver cannot run here: ``fuse_overlay`` really mounts a union
    in a fresh user and mount namespace, serves a read and a write, and is unmounted."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist (load the fuse module: modprobe fuse)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable by this user"
    if store is not None:
        base = store.mkdtemp(suffix=".fuse-probe")
    else:
        import tempfile

        base = tempfile.mkdtemp(prefix="sandbox-fuse-probe-")
    return _probe(_probe_fuse_in_ns, base, "fuse_overlay mount")


def _fuse_fingerprint() -> list[str]:
    """What the FUSE probe's answer depends on besides the kernel: the device, the interpreter
    that runs ``fuse_overlay`` and what it imports (installing mfusepy or fusepy changes a site
    directory), the shared libraries (installing libfuse runs ldconfig) and the environment
    variables the bindings read. A few ``stat`` calls, made only when the choice needs FUSE."""
    # the interpreter by what it is, not how it was named: python and python3 of one venv are
    # one interpreter (a fingerprint that changed with the name re-probed on every alternation)
    parts = [os.path.realpath(sys.executable)] + [f"{v}={os.environ.get(v, '')}" for v in
                                ("FUSE_LIBRARY_PATH", "FUSE_LIBRARY_NAME", "PYTHONPATH")]
    paths = ["/dev/fuse", "/etc/ld.so.cache"] + [
        p for p in sys.path if os.path.isabs(p) and p.endswith(("site-packages", "dist-packages"))]
    for path in paths:
        try:
            st = os.stat(path)
            parts.append(f"{path}:{st.st_mode:o}:{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{path}:-")
    return parts


def _cache_path(store: Store) -> str:
    return store.path("driver-probe.json")


def _cached(store: Store, release: str) -> dict[str, Any]:
    try:
        cached = json.loads(read_bytes(_cache_path(store)))
    except (OSError, ValueError):
        return {}
    return cached if isinstance(cached, dict) and cached.get("kernel") == release else {}


NOT_PROBED = "not probed (kernel overlay is used)"


def _probes(store: Store, requested: str | None, every: bool = False) -> dict[str, str]:
    """The probe answers the choice needs, from the cache or probed now (and cached). FUSE is
    asked only when the choice depends on it (kernel overlay refused, or ``fuse`` requested)
    or ``every`` probe is wanted (``sandbox info``): a run on kernel overlay pays nothing."""
    release = os.uname().release
    cached = _cached(store, release)
    probes: dict[str, str] = dict(cached.get("probes") or {})
    fingerprint = cached.get("fuse_fingerprint")
    changed = False
    if "overlay" not in probes:
        store.ensure()
        probes["overlay"] = probe_overlay(store)
        changed = True
    if every or requested == "fuse" or (requested is None and probes["overlay"] != "ok"):
        current = _fuse_fingerprint()
        fuse = probes.get("fuse")
        if fuse is None or fingerprint != current or (requested == "fuse" and fuse != "ok"):
            store.ensure()
            probes["fuse"] = probe_fuse(store)
            fingerprint, changed = current, True
    # the order of preference; an answer not asked for stays as cached
    probes = {"overlay": probes["overlay"], "fuse": probes.get("fuse", NOT_PROBED)}
    if changed:
        cache = {"kernel": release, "probes": probes, "fuse_fingerprint": fingerprint}
        if probes["fuse"] == NOT_PROBED:
            cache["probes"] = {"overlay": probes["overlay"]}
        try:
            store.write_json(_cache_path(store), cache)
        except OSError:
            pass
    return probes


def select_driver(store: Store, requested: str | None = None, *,
                  every_probe: bool = False) -> DriverChoice:
    """The driver to use, and why (with the probes' answers; ``every_probe`` for ``sandbox
    info``, which shows them all)."""
    requested = requested or os.environ.get("SANDBOX_STORAGE_DRIVER") or None
    if requested is not None and requested not in DRIVERS:
        raise SandboxError(f"unknown storage driver {requested!r}",
                           hint="use overlay, fuse or copy")
    probes = _probes(store, requested, every_probe)
    if requested:
        if requested != "copy" and probes.get(requested, "ok") != "ok":
            raise SandboxError(f"storage driver {requested} is unavailable: {probes[requested]}")
        return DriverChoice(requested, "requested with --storage-driver or "
                                       "SANDBOX_STORAGE_DRIVER", probes)
    if probes["overlay"] == "ok":
        return DriverChoice("overlay", "kernel overlayfs mounts in a user namespace "
                                       f"(Linux {os.uname().release})", probes)
    if probes["fuse"] == "ok":
        return DriverChoice("fuse", f"kernel overlay unavailable ({probes['overlay']}); "
                                    "fuse_overlay mounts in a user namespace", probes)
    return DriverChoice("copy", f"neither kernel overlay ({probes['overlay']}) nor FUSE "
                                f"({probes['fuse']}) is usable: layers are copied", probes)
