"""User and group id maps for the container's user namespace.

Policy (DESIGN.md decision 2): when the user has ``/etc/subuid`` and ``/etc/subgid`` ranges and
``newuidmap``/``newgidmap`` are installed, container 0 is the user and 1..N are the range (as
Podman does); otherwise only 0 is mapped, to the user, with ``setgroups`` denied (as bubblewrap
and charliecloud do).
"""

from __future__ import annotations

import os

from sandbox.errors import UserNamespaceUnavailable
from sandbox.spec import IdMap

__all__ = ["IdMapping", "detect_mapping", "read_subid_ranges", "write_maps", "map_failure",
           "MapError",
           "mapped_id_count"]


class MapError(OSError):
    """Writing the maps of a child failed."""


class IdMapping:
    """The maps chosen for this user, and why."""

    __slots__ = ("mode", "uid_map", "gid_map", "reason", "newuidmap", "newgidmap")

    def __init__(self, mode: str, uid_map: tuple[IdMap, ...], gid_map: tuple[IdMap, ...],
                 reason: str, newuidmap: str = "", newgidmap: str = "") -> None:
        self.mode = mode
        self.uid_map = uid_map
        self.gid_map = gid_map
        self.reason = reason
        self.newuidmap = newuidmap
        self.newgidmap = newgidmap

    def max_uid(self) -> int:
        return max(m.container_id + m.size - 1 for m in self.uid_map)


def read_subid_ranges(path: str, user: str, uid: int) -> list[tuple[int, int]]:
    """Ranges (start, count) for ``user`` (by name or numeric id) in a subuid/subgid file."""
    ranges: list[tuple[int, int]] = []
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return ranges
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) != 3 or parts[0] not in (user, str(uid)):
            continue
        try:
            start, count = int(parts[1]), int(parts[2])
        except ValueError:
            continue
        if count > 0:
            ranges.append((start, count))
    return ranges


def mapped_id_count(path: str = "/proc/self/uid_map") -> int:
    """How many uids the current user namespace maps (4294967295 in the initial one)."""
    try:
        with open(path) as f:
            return sum(int(line.split()[2]) for line in f if line.strip())
    except (OSError, ValueError, IndexError):
        return 1


def which(name: str) -> str:
    """``shutil.which`` without importing shutil (start-up path)."""
    for d in os.environ.get("PATH", os.defpath).split(os.pathsep) + ["/usr/sbin", "/usr/bin"]:
        path = os.path.join(d, name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return ""


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def detect_mapping(*, force_single: bool = False) -> IdMapping:
    """Pick the maps for the calling user; ``SANDBOX_USERNS=single`` forces the one-id map."""
    uid, gid = os.getuid(), os.getgid()
    single = IdMapping("single", (IdMap(0, uid, 1),), (IdMap(0, gid, 1),), "")
    if force_single or os.environ.get("SANDBOX_USERNS") == "single":
        single.reason = "single-uid mode forced (SANDBOX_USERNS=single)"
        return single
    user = _user_name(uid)
    sub_u = read_subid_ranges("/etc/subuid", user, uid)
    sub_g = read_subid_ranges("/etc/subgid", user, uid)
    if not sub_u or not sub_g:
        missing = "/etc/subuid" if not sub_u else "/etc/subgid"
        single.reason = (f"no range for {user} in {missing}: only uid {uid} is mapped "
                         f"(to 0); add a range to /etc/subuid and /etc/subgid for more")
        return single
    newuidmap = which("newuidmap")
    newgidmap = which("newgidmap")
    if not newuidmap or not newgidmap:
        single.reason = ("newuidmap/newgidmap not installed (package uidmap): only uid "
                         f"{uid} is mapped")
        return single
    uid_map = [IdMap(0, uid, 1)]
    nxt = 1
    for start, count in sub_u:
        uid_map.append(IdMap(nxt, start, count))
        nxt += count
    gid_map = [IdMap(0, gid, 1)]
    nxt = 1
    for start, count in sub_g:
        gid_map.append(IdMap(nxt, start, count))
        nxt += count
    reason = (f"{user} has {sum(c for _, c in sub_u)} subordinate uids in /etc/subuid: "
              "container 0 is you, 1.. are the range")
    return IdMapping("subuid", tuple(uid_map), tuple(gid_map), reason, newuidmap, newgidmap)


def _map_args(maps: tuple[IdMap, ...]) -> list[str]:
    out: list[str] = []
    for m in maps:
        out += [str(m.container_id), str(m.host_id), str(m.size)]
    return out


def _map_text(maps: tuple[IdMap, ...]) -> bytes:
    return "".join(f"{m.container_id} {m.host_id} {m.size}\n" for m in maps).encode()


# The map tools get no environment: nothing in it is theirs to read, and with LANG set they load
# locale data on every container's start.
_TOOL_ENV: dict[str, str] = {}


def map_failure(exc: MapError, *, subuid: bool = True) -> UserNamespaceUnavailable:
    """The one-line error for maps that could not be written (the hint names the map tools'
    configuration where they were used)."""
    return UserNamespaceUnavailable(
        f"cannot write the uid/gid maps: {exc.strerror}",
        hint="check /etc/subuid, /etc/subgid and that newuidmap is setuid root" if subuid else None)


def map_tool_argvs(pid: int, mapping: IdMapping) -> list[list[str]]:
    """The ``newuidmap`` and ``newgidmap`` commands that map process ``pid`` (which has just
    unshared its user namespace)."""
    return [[tool, str(pid), *_map_args(maps)]
            for tool, maps in ((mapping.newuidmap, mapping.uid_map),
                               (mapping.newgidmap, mapping.gid_map))]


def start_map_tool(argv: list[str]) -> tuple[str, int]:
    """Start one of ``map_tool_argvs``; returns (tool, pid) for ``wait_map_tools``."""
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        return argv[0], os.posix_spawn(argv[0], argv, _TOOL_ENV,
                                       file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 0),
                                                     (os.POSIX_SPAWN_DUP2, devnull, 1)])
    finally:
        os.close(devnull)


def start_map_tools(pid: int, mapping: IdMapping) -> list[tuple[str, int]]:
    """Start both map tools on process ``pid``, side by side."""
    procs: list[tuple[str, int]] = []
    try:
        for argv in map_tool_argvs(pid, mapping):
            procs.append(start_map_tool(argv))
    except BaseException:
        wait_map_tools(pid, procs, check=False)
        raise
    return procs


def wait_map_tools(pid: int, procs: list[tuple[str, int]], *, check: bool = True) -> None:
    """Reap every tool ``start_map_tools`` started; ``MapError`` names the first that failed."""
    failed = ""
    for tool, child in procs:
        try:
            _, status = os.waitpid(child, 0)
        except ChildProcessError:  # reaped already
            continue
        code = os.waitstatus_to_exitcode(status)
        if code != 0 and not failed:
            failed = f"{os.path.basename(tool)} {pid} failed with exit {code}"
    if failed and check:
        raise MapError(1, failed)


def write_maps(pid: int, mapping: IdMapping) -> None:
    """Write the maps of process ``pid`` (which has just unshared its user namespace): with the
    map tools in subuid mode, else ourselves (``setgroups`` denied first)."""
    uid_map, gid_map = mapping.uid_map, mapping.gid_map
    if mapping.mode == "subuid":
        wait_map_tools(pid, start_map_tools(pid, mapping))
        return
    base = f"/proc/{pid}/"
    for name, data in (("setgroups", b"deny"), ("uid_map", _map_text(uid_map)),
                       ("gid_map", _map_text(gid_map))):
        fd = os.open(base + name, os.O_WRONLY)
        try:
            os.write(fd, data)
        except OSError as exc:
            raise MapError(exc.errno, f"writing {base}{name}: {exc.strerror}") from None
        finally:
            os.close(fd)
