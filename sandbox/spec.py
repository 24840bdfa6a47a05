"""What a container is, as frozen data: ``ContainerSpec`` and its parts.

A spec is built by the front ends (CLI, pytest plugin), checked by ``validate_spec`` (a list of
small named checkers), turned into a plan by ``sandbox.runtime.plan`` and serialised as JSON when a
fresh helper process must execute it.
"""

from __future__ import annotations

import os

from sandbox import _json as json
from sandbox._record import asdict, field, record
from sandbox.errors import SpecError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


__all__ = [
    "IdMap", "Mount", "RootfsSpec", "ContainerSpec", "validate_spec", "spec_to_json",
    "spec_from_json", "parse_env_list", "parse_env_file", "NETWORK_MODES", "DEFAULT_CAPS",
]

NETWORK_MODES = ("none", "host", "slirp4netns", "pasta")  # see sandbox.runtime.network

# Docker's default capability set (moby oci/caps/defaults.go).
DEFAULT_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)


@record
class IdMap:
    """One line of a uid_map or gid_map."""

    container_id: int
    host_id: int
    size: int


@record
class Mount:
    """A user mount: ``bind`` (source is a host path), ``tmpfs`` or ``volume``."""

    target: str
    type: str = "bind"
    source: str = ""
    readonly: bool = False
    options: tuple[str, ...] = ()


@record
class RootfsSpec:
    """How the container's root filesystem is assembled by the storage driver."""

    driver: str  # "overlay" | "fuse" | "copy"
    lowers: tuple[str, ...]  # top-most first; absolute host paths
    upper: str
    work: str
    mountpoint: str
    host: bool = False  # the built-in ``host`` image: lowers are the host's top-level dirs
    binds: tuple[str, ...] = ()  # host image: top-level dirs with submounts, bound read-only
    tmpfs: tuple[str, ...] = ()  # host image: top-level dirs replaced by a fresh tmpfs
    # overlayfs ``volatile``: no sync of the upper filesystem at unmount, for layers that are
    # thrown away (``--rm``, the pytest plugin's isolated tests)
    volatile: bool = False
    # the writable layer in memory: a tmpfs that C mounts over ``upper`` and ``work`` in a mount
    # namespace of its own, gone with the container (kernel overlay only). Seen from outside as
    # ``/proc/<C>/root`` + ``upper`` while the container lives. For the pytest plugin's isolated
    # tests: no inode of the store's filesystem is made or freed per test.
    scratch: bool = False

    @property
    def upper_dir(self) -> str:
        """The directory overlayfs takes as ``upperdir``: ``upper``, or in a scratch layer its
        place in the tmpfs over ``work`` (overlayfs wants both on one mount)."""
        return f"{self.work}/.sandbox-upper" if self.scratch else self.upper

    @property
    def work_dir(self) -> str:
        """The directory overlayfs takes as ``workdir`` (see ``upper_dir``)."""
        return f"{self.work}/.sandbox-work" if self.scratch else self.work

    def upper_seen_from_outside(self, holder: int) -> str:
        """Where a process outside the container reads ``upper_dir`` of a scratch layer while
        ``holder`` (C, in whose mount namespace the tmpfs is) lives."""
        return f"/proc/{holder}/root{self.upper_dir}"


@record
class ContainerSpec:
    """Everything the runtime needs to create one container."""

    id: str
    name: str
    image: str
    image_id: str
    rootfs: RootfsSpec
    argv: tuple[str, ...]
    env: tuple[str, ...] = ()
    workdir: str = "/"
    user: str = ""
    hostname: str = ""
    network: str = "none"
    readonly_rootfs: bool = False
    interactive: bool = False
    tty: bool = False
    mounts: tuple[Mount, ...] = ()
    uid_map: tuple[IdMap, ...] = ()
    gid_map: tuple[IdMap, ...] = ()
    map_mode: str = "single"  # "subuid" (newuidmap ranges) or "single"
    caps: tuple[str, ...] = DEFAULT_CAPS
    container_dir: str = ""
    store_root: str = ""
    remove: bool = False
    labels: dict[str, str] = field(default_factory=dict)


# -- validation ------------------------------------------------------------------------------


def _check_argv(spec: ContainerSpec) -> None:
    if not spec.argv or not spec.argv[0]:
        raise SpecError("no command specified",
                        hint="give a command after the image, or use an image with CMD")


def _check_env(spec: ContainerSpec) -> None:
    for item in spec.env:
        name = item.partition("=")[0]
        if not name or "\0" in item:
            raise SpecError(f"invalid environment variable {item!r}",
                            hint="use -e NAME=VALUE or -e NAME")


def check_workdir(workdir: str) -> None:
    """``-w`` of ``run`` and ``exec``: an absolute path."""
    if not workdir.startswith("/"):
        raise SpecError(f"the working directory {workdir!r} is invalid",
                        hint="it needs to be an absolute path")


def _check_paths(spec: ContainerSpec) -> None:
    check_workdir(spec.workdir)
    for m in spec.mounts:
        if not m.target.startswith("/"):
            raise SpecError(f"invalid mount target {m.target!r}: it must be an absolute path")
        if m.type == "bind" and not os.path.isabs(m.source):
            raise SpecError(f"invalid bind mount source {m.source!r}: it must be an absolute path")
        if m.type not in ("bind", "tmpfs", "volume"):
            raise SpecError(f"invalid mount type {m.type!r}", hint="use bind, volume or tmpfs")


def _check_network(spec: ContainerSpec) -> None:
    if spec.network not in ("none", "host"):
        from sandbox.runtime.network import check_network

        check_network(spec.network)


def _check_hostname(spec: ContainerSpec) -> None:
    if len(spec.hostname) > 64 or any(c.isspace() for c in spec.hostname):
        raise SpecError(f"invalid hostname {spec.hostname!r}")


def _check_user(spec: ContainerSpec) -> None:
    if spec.user.count(":") > 1 or spec.user.startswith(":"):
        raise SpecError(f"invalid user {spec.user!r}", hint="use -u NAME|UID[:GROUP|GID]")


CHECKERS: tuple[Callable[[ContainerSpec], None], ...] = (
    _check_argv, _check_env, _check_paths, _check_network, _check_hostname, _check_user)


def validate_spec(spec: ContainerSpec) -> ContainerSpec:
    for check in CHECKERS:
        check(spec)
    return spec


# -- serialisation ----------------------------------------------------------------------------

def spec_to_json(spec: ContainerSpec) -> str:
    return json.dumps(asdict(spec))


def spec_from_json(text: str | bytes) -> ContainerSpec:
    data: dict[str, Any] = json.loads(text)
    rootfs = data["rootfs"]
    for key in ("lowers", "binds", "tmpfs"):
        rootfs[key] = tuple(rootfs[key])
    data["rootfs"] = RootfsSpec(**rootfs)
    data["mounts"] = tuple(Mount(**{**m, "options": tuple(m["options"])}) for m in data["mounts"])
    data["uid_map"] = tuple(IdMap(**m) for m in data["uid_map"])
    data["gid_map"] = tuple(IdMap(**m) for m in data["gid_map"])
    for key in ("argv", "env", "caps"):
        data[key] = tuple(data[key])
    return ContainerSpec(**data)


# -- environment parsing ----------------------------------------------------------------------

def parse_env_list(items: list[str] | tuple[str, ...],
                   environ: dict[str, str] | None = None) -> list[str]:
    """Docker's ``-e``: ``NAME=VALUE`` sets, bare ``NAME`` copies from the caller if set."""
    source = os.environ if environ is None else environ
    out: list[str] = []
    for item in items:
        name, eq, _ = item.partition("=")
        if not name or "\0" in item or any(c.isspace() for c in name):
            raise SpecError(f"invalid environment variable {item!r}",
                            hint="use -e NAME=VALUE or -e NAME")
        if eq:
            out.append(item)
        elif name in source:
            out.append(f"{name}={source[name]}")
    return out


def parse_env_file(path: str) -> list[str]:
    """Docker's ``--env-file``: one ``NAME=VALUE`` or ``NAME`` a line, ``#`` comments."""
    from sandbox.store import read_text

    lines = read_text(path, "env file").splitlines()
    items = [ln.lstrip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    return parse_env_list(items)
