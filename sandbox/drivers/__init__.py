"""Storage drivers: how a container's root filesystem is assembled.

In order of preference (DESIGN decision 3): ``overlay`` (kernel overlayfs mounted inside the user
namespace, Linux 5.11+ with ``userxattr``), ``fuse`` (our ``fuse_overlay``), ``copy`` (the layers
flattened into a private directory). The choice is probed once per kernel and cached in the
store; ``--storage-driver`` or ``SANDBOX_STORAGE_DRIVER`` overrides it.
"""

from __future__ import annotations

import os

from sandbox import _json as json
from sandbox._record import record
from sandbox.errors import SandboxError, UserNamespaceUnavailable
from sandbox.store import Store

__all__ = ["DRIVERS", "DriverChoice", "select_driver", "probe_overlay", "probe_fuse"]

DRIVERS = ("overlay", "fuse", "copy")


@record
class DriverChoice:
    """The storage driver chosen, why, and what the probes found."""

    name: str
    reason: str
    probes: dict[str, str]


def _probe_overlay_in_ns(base: str) -> str:
    """Runs inside a fresh user+mount namespace: try a real overlay mount."""
    from sandbox import _syscalls as sc

    for sub in ("l", "u", "w", "m"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    sc.mount(None, "/", None, sc.MS_PRIVATE | sc.MS_REC)
    opts = f"lowerdir={base}/l,upperdir={base}/u,workdir={base}/w,userxattr"
    sc.mount("overlay", f"{base}/m", "overlay", 0, opts)
    sc.umount2(f"{base}/m", sc.MNT_DETACH)
    return "ok"


def probe_overlay(store: Store) -> str:
    """``ok`` or why kernel overlayfs cannot be mounted in a user namespace here.

    A user namespace that cannot be made at all (maps refused) is raised, not a probe result:
    it is not a fact about overlayfs to remember, and nothing would run anyway.
    """
    from sandbox.runtime.idmap import MapError
    from sandbox.runtime.userns import run_in_userns

    base = store.mkdtemp(suffix=".probe")
    try:
        return run_in_userns(_probe_overlay_in_ns, base)
    except MapError as exc:
        raise UserNamespaceUnavailable(f"cannot write the uid/gid maps: {exc.strerror}",
                                       hint="check /etc/subuid, /etc/subgid and that "
                                            "newuidmap is setuid root") from None
    except UserNamespaceUnavailable:
        raise
    except OSError as exc:
        return f"overlay mount in a user namespace failed: {os.strerror(exc.errno or 0)}"
    except SandboxError as exc:
        return exc.one_line()
    finally:
        from sandbox.runtime.userns import run_in_userns as _run

        try:
            _run(store.rm_rf, base)
        except Exception:  # noqa: BLE001 - no namespace: nothing in it was made inside one
            try:
                store.rm_rf(base)
            except (OSError, SandboxError):
                pass


def probe_fuse() -> str:
    """``ok`` or why the ``fuse`` driver cannot run here."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist (load the fuse module)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable by this user"
    from sandbox.runtime.idmap import which

    if not (which("fusermount3") or which("fusermount")):
        return "fusermount3 is not installed (package fuse3)"
    try:
        import importlib.util

        if importlib.util.find_spec("fuse_overlay.operations") is None:
            return "fuse_overlay is not installed"
    except ImportError:
        return "fuse_overlay is not installed"
    return "ok"


def _cache_path(store: Store) -> str:
    return store.path("driver-probe.json")


def select_driver(store: Store, requested: str | None = None) -> DriverChoice:
    """The driver to use, and why."""
    requested = requested or os.environ.get("SANDBOX_STORAGE_DRIVER") or None
    if requested is not None and requested not in DRIVERS:
        raise SandboxError(f"unknown storage driver {requested!r}",
                           hint="use overlay, fuse or copy")
    release = os.uname().release
    probes: dict[str, str] = {}
    try:
        with open(_cache_path(store)) as f:
            cached = json.load(f)
        if cached.get("kernel") == release:
            probes = dict(cached.get("probes", {}))
    except (OSError, ValueError):
        pass
    if "overlay" not in probes:
        store.ensure()
        probes["overlay"] = probe_overlay(store)
        probes["fuse"] = probe_fuse()
        try:
            store.write_json(_cache_path(store), {"kernel": release, "probes": probes})
        except OSError:
            pass
    if requested:
        if requested != "copy" and probes.get(requested, "ok") != "ok":
            raise SandboxError(f"storage driver {requested} is unavailable: {probes[requested]}")
        return DriverChoice(requested, "requested with --storage-driver or "
                                       "SANDBOX_STORAGE_DRIVER", probes)
    if probes["overlay"] == "ok":
        return DriverChoice("overlay", "kernel overlayfs mounts in a user namespace "
                                       f"(Linux {release})", probes)
    if probes["fuse"] == "ok":
        return DriverChoice("fuse", f"kernel overlay unavailable ({probes['overlay']}); "
                                    "fuse_overlay works", probes)
    return DriverChoice("copy", f"neither kernel overlay ({probes['overlay']}) nor FUSE "
                                f"({probes['fuse']}) is usable: layers are copied", probes)
