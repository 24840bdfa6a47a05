"""Policy becomes a plan: a ``ContainerSpec`` turned into the ordered setup steps.

Pure: no syscalls here. ``sandbox.runtime.init`` executes the steps (bubblewrap's ``SetupOp`` list,
runc's ``prepareRootfs``/``finalizeRootfs``). ``sandbox run --dry-run`` prints them.

The order is fixed, in ``build_plan``:
  1. (parent side, before the plan) unshare the user namespace, write the maps
     (``setgroups`` denied before ``gid_map`` in single-uid mode);
  2. the network mode's namespace half (``lo`` up for ``none``), unless the parent makes the
     network namespace meanwhile (``net_made``: step 5 joins it);
  3. make ``/`` ``MS_SLAVE|MS_REC`` so nothing propagates back to the host;
  4. the rootfs (storage driver), a mount point of its own;
  5. ``/proc`` with its masked and read-only paths, ``/dev`` (tmpfs + device binds + devpts +
     shm + mqueue), the network namespace the parent made (``netns``), ``/sys`` (sysfs shows
     the devices of its mounter's network namespace) with ``/sys/fs/cgroup`` (cgroup2,
     read-only) and its masked paths, ``/etc/hosts``/``hostname``/``resolv.conf``, user
     mounts;
  6. ``pivot_root`` and detach the old root;
  7. read-only root remount, hostname; then the init forks and execs the command.
"""

from __future__ import annotations

from sandbox import _syscalls as sc
from sandbox._record import record
from sandbox.spec import ContainerSpec, RootfsSpec

__all__ = ["MountOp", "build_plan", "rootfs_ops", "format_plan", "MASKED_PATHS",
           "READONLY_PATHS", "DEVICES"]

# runc's defaults (libcontainer/specconv/example.go and moby oci/defaults.go).
MASKED_PATHS = (
    "/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys",
    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
    "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"))

_NOSUID_NODEV_NOEXEC = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC


@record
class MountOp:
    """One setup step.

    ``kind`` is one of: ``lo_up``, ``rslave``, ``mount`` (it makes its target directory when
    missing), ``bind`` (``flags`` may add ``MS_REC``; it makes its missing target, a file or a
    directory as the source is), ``remount_ro`` (an existing mount point), ``readonly`` (bind
    onto itself, then ``remount_ro``), ``rmdir``, ``unlink``, ``symlink``, ``mask``,
    ``pivot_root``, ``hostname``.
    ``in_root`` targets are container paths resolved inside the rootfs with ``resolve_in_root``
    at execution time; other targets are host paths. ``optional`` steps are
    skipped when they fail with ENOENT/EPERM (a masked path the kernel does not have).
    """

    kind: str
    target: str
    source: str = ""
    fstype: str = ""
    flags: int = 0
    data: str = ""
    in_root: bool = False
    optional: bool = False


def rootfs_ops(rootfs: RootfsSpec) -> list[MountOp]:
    """Step 4: the storage driver's half inside the namespaces.

    ``rootfs.volatile`` (``--rm``, test containers): overlayfs skips syncing the upper
    filesystem when it is unmounted, as Podman mounts ``--rm`` containers: their layer is
    deleted next, and that sync is a journal commit of the store's filesystem per overlay.
    """
    mnt = rootfs.mountpoint
    volatile = rootfs.volatile
    if rootfs.driver == "copy":
        return [MountOp("bind", mnt, source=rootfs.upper, flags=sc.MS_REC)]
    if rootfs.driver == "fuse":
        # the fuse_overlay process was started by the executor; its mount is already there.
        return [MountOp("bind", mnt, source=mnt, flags=sc.MS_REC)]
    upper, work = rootfs.upper_dir, rootfs.work_dir
    if not rootfs.host:
        return [*_volatile_reset(work, volatile),
                MountOp("mount", mnt, source="overlay", fstype="overlay",
                        data=overlay_options(rootfs.lowers, upper, work, volatile=volatile))]
    ops = [MountOp("bind", mnt, source=upper)]
    for lower in rootfs.lowers:
        name = lower.strip("/")
        ops += _volatile_reset(f"{work}/{name}", volatile)
        ops.append(MountOp("mount", f"{mnt}/{name}", source="overlay", fstype="overlay",
                           data=overlay_options((lower,), f"{upper}/{name}", f"{work}/{name}",
                                                volatile=volatile)))
    for bind in rootfs.binds:
        name = bind.strip("/")
        ops.append(MountOp("bind", f"{mnt}/{name}", source=bind, flags=sc.MS_REC))
        ops.append(MountOp("remount_ro", f"{mnt}/{name}", optional=True))
    for tmp in rootfs.tmpfs:
        name = tmp.strip("/")
        ops.append(MountOp("mount", f"{mnt}/{name}", source="tmpfs", fstype="tmpfs",
                           flags=sc.MS_NOSUID | sc.MS_NODEV, data="mode=1777"))
    return ops


def _volatile_reset(work: str, volatile: bool) -> list[MountOp]:
    """A volatile overlay leaves ``work/work/incompat/volatile/dirty`` and refuses the next
    mount of the same upper while it is there; a layer mounted again (the pytest plugin reuses
    an isolated test's untouched container) was unmounted cleanly, so the marker goes."""
    if not volatile:
        return []
    marker = f"{work}/work/incompat/volatile"
    return [MountOp("unlink", f"{marker}/dirty", optional=True),
            MountOp("rmdir", marker, optional=True),
            MountOp("rmdir", f"{work}/work/incompat", optional=True)]


def overlay_options(lowers: tuple[str, ...], upper: str, work: str, *,
                    volatile: bool = False) -> str:
    escaped = ":".join(low.replace(",", "\\,").replace(":", "\\:") for low in lowers)
    return (f"lowerdir={escaped},upperdir={upper},workdir={work},userxattr"
            + (",volatile" if volatile else ""))


def _dev_ops(spec: ContainerSpec) -> list[MountOp]:
    ops = [MountOp("mount", "/dev", source="tmpfs", fstype="tmpfs",
                   flags=sc.MS_NOSUID | sc.MS_STRICTATIME, data="mode=755,size=65536k",
                   in_root=True)]
    for dev in DEVICES:
        ops.append(MountOp("bind", f"/dev/{dev}", source=f"/dev/{dev}", in_root=True,
                           optional=dev == "tty"))
    pts_data = "newinstance,ptmxmode=0666,mode=0620"
    if spec.map_mode == "subuid":
        pts_data += ",gid=5"
    ops += [
        MountOp("mount", "/dev/pts", source="devpts", fstype="devpts",
                flags=sc.MS_NOSUID | sc.MS_NOEXEC, data=pts_data, in_root=True),
        MountOp("mount", "/dev/shm", source="shm", fstype="tmpfs",
                flags=_NOSUID_NODEV_NOEXEC, data="mode=1777,size=65536k", in_root=True),
        MountOp("mount", "/dev/mqueue", source="mqueue", fstype="mqueue",
                flags=_NOSUID_NODEV_NOEXEC, in_root=True, optional=True),
    ]
    for name, target in DEV_LINKS:
        ops.append(MountOp("symlink", f"/dev/{name}", source=target, in_root=True))
    return ops


def _proc_ops() -> list[MountOp]:
    ops = [MountOp("mount", "/proc", source="proc", fstype="proc", flags=_NOSUID_NODEV_NOEXEC,
                   in_root=True)]
    ops += [MountOp("mask", p, in_root=True, optional=True) for p in MASKED_PATHS
            if p.startswith("/proc/")]
    ops += [MountOp("readonly", p, in_root=True, optional=True) for p in READONLY_PATHS]
    return ops


def _sys_ops(spec: ContainerSpec) -> list[MountOp]:
    ops: list[MountOp] = []
    if spec.network == "host":
        # sysfs can only be mounted by the owner of the network namespace: bind the host's.
        ops += [MountOp("bind", "/sys", source="/sys", flags=sc.MS_REC, in_root=True),
                MountOp("remount_ro", "/sys", in_root=True, optional=True)]
    else:
        ops.append(MountOp("mount", "/sys", source="sysfs", fstype="sysfs",
                           flags=_NOSUID_NODEV_NOEXEC | sc.MS_RDONLY, in_root=True))
        # the container's own cgroup (namespace root) read-only, as Docker with cgroupns=private:
        # what a process reads to learn its limits; skipped where cgroup2 cannot be mounted
        ops.append(MountOp("mount", "/sys/fs/cgroup", source="cgroup2", fstype="cgroup2",
                           flags=_NOSUID_NODEV_NOEXEC | sc.MS_RDONLY, in_root=True,
                           optional=True))
    ops += [MountOp("mask", p, in_root=True, optional=True) for p in MASKED_PATHS
            if not p.startswith("/proc/")]
    return ops


def _etc_ops(spec: ContainerSpec) -> list[MountOp]:
    return [MountOp("bind", f"/etc/{name}", source=f"{spec.container_dir}/{name}", in_root=True)
            for name in ("hosts", "hostname", "resolv.conf")]


def _user_mount_ops(spec: ContainerSpec) -> list[MountOp]:
    ops: list[MountOp] = []
    for m in spec.mounts:
        if m.type == "tmpfs":
            ops.append(MountOp("mount", m.target, source="tmpfs", fstype="tmpfs",
                               flags=sc.MS_NOSUID | sc.MS_NODEV,
                               data=",".join(m.options) or "mode=1777", in_root=True))
            continue
        ops.append(MountOp("bind", m.target, source=m.source, flags=sc.MS_REC, in_root=True))
        if m.readonly:
            ops.append(MountOp("remount_ro", m.target, in_root=True))
    return ops


def build_plan(spec: ContainerSpec, *, net_made: bool = False) -> list[MountOp]:
    """The whole setup, in the fixed order of this module's docstring. ``net_made``: the
    parent makes the container's network namespace, with ``lo`` up, while the steps before
    ``netns`` run (``sandbox.runtime.process.start`` with ``inline``)."""
    ops: list[MountOp] = []
    own_net = spec.network != "host"  # none, slirp4netns: our own network namespace
    if own_net and not net_made:
        ops.append(MountOp("lo_up", "lo"))                                   # 2
    ops.append(MountOp("rslave", "/"))                                       # 3
    ops += rootfs_ops(spec.rootfs)                                           # 4
    ops += _proc_ops()                                                       # 5
    ops += _dev_ops(spec)
    if own_net and net_made:
        ops.append(MountOp("netns", "net"))
    ops += _sys_ops(spec)
    ops += _etc_ops(spec)
    ops += _user_mount_ops(spec)
    ops.append(MountOp("pivot_root", spec.rootfs.mountpoint))                # 6
    if spec.readonly_rootfs:                                                 # 7
        ops.append(MountOp("remount_ro", "/"))
    if spec.hostname:
        ops.append(MountOp("hostname", spec.hostname))
    return ops


def format_plan(ops: list[MountOp]) -> str:
    """One line a step, for ``sandbox run --dry-run``."""
    lines = []
    for i, op in enumerate(ops, 1):
        where = f"<root>{op.target}" if op.in_root else op.target
        parts = [f"{i:3d}. {op.kind:<10} {where}"]
        if op.source:
            parts.append(f"from {op.source}")
        if op.fstype:
            parts.append(f"type {op.fstype}")
        if op.data:
            parts.append(f"[{op.data}]")
        if op.optional:
            parts.append("(optional)")
        lines.append(" ".join(parts))
    return "\n".join(lines)
