"""Container state on disk, and process identity checks (no daemon: files are the truth).

``containers/<id>/state.json`` is written by whoever owns the container's processes: the monitor
of a detached container, or the CLI of a foreground run. Every process identity stored there is
a pair (pid, start time in clock ticks from ``/proc/PID/stat``), so a recycled pid is never
mistaken for the container's (DESIGN decision 5). ``hostconfig.json`` holds what ``run``/``create``
asked for beyond the spec (ports, volumes, restart policy, stop signal, limits).
"""

from __future__ import annotations

import os
import time

from sandbox import _json as json
from sandbox.store import FileLock, read_bytes, unlink_missing_ok, write_bytes

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["proc_stat", "proc_start_time", "alive", "rfc3339", "parse_time", "read_state",
           "write_state", "update_state", "read_hostconfig", "write_hostconfig", "state_lock",
           "EXIT_SUFFIX", "container_processes", "children_of", "LIVE", "OWNED_SUFFIX", "owned",
           "owned_marker", "mark_starting", "starting_owner"]

EXIT_SUFFIX = ".exit"  # containers/<id>.exit: the last status of an --rm container
# containers/<id>.owned: the container's state names an owner (monitor or foreground CLI) whose
# death must be noticed; ``lifecycle.cleanup_stale`` looks at these alone, not at every container
# (it ran on every `run`, reading each container's state: 11 us a container). A foreground run
# makes it before the state says running, holding the run's and PID 1's identities
# (``mark_starting``), so a run killed in between is found too.
OWNED_SUFFIX = ".owned"
_STARTING_KEYS = ("monitor_pid", "monitor_start", "init_pid", "init_start")
LIVE = ("running", "paused")


def owned_marker(cdir: str) -> str:
    return os.path.normpath(cdir) + OWNED_SUFFIX


def mark_starting(cdir: str, owner: tuple[int, int], init: tuple[int, int]) -> None:
    """The owned marker of a container a foreground run is starting: the run's (pid, start
    time) and its PID 1's ((0, 0) where PID 1 is not known yet: ``_control.kill_leftovers``
    then has no process to look for, and the container's processes end with the run by their
    parent-death signals). Made as soon as the container's first process exists, while the
    state still says "created"; the running state replaces it with one that names the same
    owner."""
    write_bytes(owned_marker(cdir), " ".join(map(str, (*owner, *init))).encode())


def starting_owner(cdir: str) -> dict[str, int]:
    """What ``mark_starting`` wrote, as state keys (``monitor_pid``, ``monitor_start``,
    ``init_pid``, ``init_start``); empty where the marker is missing or holds nothing (the
    marker of a state that names its owner itself)."""
    try:
        fields = read_bytes(owned_marker(cdir)).split()
        values = [int(f) for f in fields]
    except (OSError, ValueError):
        return {}
    if len(values) != 4 or values[0] <= 0 or values[1] <= 0:
        return {}  # no identity that ``alive`` could confirm: nobody to find dead
    return dict(zip(_STARTING_KEYS, values, strict=True))


def owned(state: dict[str, Any]) -> bool:
    """Whether ``state`` is live under a recorded owner (what ``cleanup_stale`` checks)."""
    return state.get("status") in LIVE and "monitor_pid" in state


def proc_stat(pid: int) -> list[bytes]:
    """The fields of ``/proc/PID/stat`` after the command's name, field 3 (the state) first;
    empty if the process is gone."""
    try:
        data = read_bytes(f"/proc/{pid}/stat")
    except OSError:
        return []
    return data[data.rfind(b")") + 2:].split()


def proc_start_time(pid: int) -> int:
    """Field 22 of ``/proc/PID/stat`` (start time in ticks), 0 if the process is gone."""
    if pid <= 0:
        return 0
    fields = proc_stat(pid)
    try:
        if fields[0] == b"Z":
            return 0  # a zombie is as good as gone
        return int(fields[19])
    except (IndexError, ValueError):
        return 0


def alive(pid: int, start: int) -> bool:
    """True when ``pid`` runs and is the same process that was recorded (same start time)."""
    return pid > 0 and start > 0 and proc_start_time(pid) == start


def rfc3339(ts: float | None = None) -> str:
    """Docker's timestamp shape: ``2024-01-02T03:04:05.123456789Z``."""
    ts = time.time() if ts is None else ts
    whole = int(ts)
    nanos = int(round((ts - whole) * 1e9))
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    t = time.gmtime(whole)  # not strftime: libc's reads the time zone first (/etc/localtime)
    return (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:"
            f"{t.tm_sec:02d}.{nanos:09d}Z")


def parse_time(text: str) -> float:
    """The inverse of ``rfc3339`` (also accepts no fraction); 0.0 for an empty string."""
    if not text or text.startswith("0001-"):
        return 0.0
    import calendar

    main, _, frac = text.rstrip("Z").partition(".")
    base = calendar.timegm(time.strptime(main[:19], "%Y-%m-%dT%H:%M:%S"))
    return base + (float("0." + frac) if frac else 0.0)


def _state_path(cdir: str) -> str:
    return os.path.join(cdir, "state.json")


def read_state(cdir: str) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(read_bytes(_state_path(cdir)))
    except FileNotFoundError:
        return {"status": "created"}
    except ValueError:
        return {"status": "dead", "error": "state.json is corrupt"}
    return data


def write_state(cdir: str, state: dict[str, Any], *, marked: bool = False) -> None:
    """Atomic: a temp file in the same directory, then rename. An owned state gets its
    ``OWNED_SUFFIX`` marker before it is in place (``marked``: the caller made it already), and
    loses it after it is replaced, so a live owned state never lacks one."""
    tmp = os.path.join(cdir, f".state-{os.getpid()}.tmp")
    write_bytes(tmp, json.dumps(state).encode())
    marker = owned_marker(cdir)
    if owned(state) and not marked:
        write_bytes(marker, b"")
    os.replace(tmp, _state_path(cdir))
    if not owned(state):
        unlink_missing_ok(marker)


def update_state(cdir: str, **changes: Any) -> dict[str, Any]:
    state = read_state(cdir)
    state.update(changes)
    write_state(cdir, state)
    return state


def read_hostconfig(cdir: str) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(read_bytes(os.path.join(cdir, "hostconfig.json")))
        return data
    except (OSError, ValueError):
        return {}


def write_hostconfig(cdir: str, data: dict[str, Any]) -> None:
    tmp = os.path.join(cdir, ".hostconfig.tmp")
    write_bytes(tmp, json.dumps(data).encode())
    os.replace(tmp, os.path.join(cdir, "hostconfig.json"))


def state_lock(cdir: str) -> FileLock:
    """An ``flock`` on ``containers/<id>/lock`` (it goes away with the directory)."""
    return FileLock(os.path.join(cdir, "lock"))


def children_of(pid: int) -> list[int]:
    try:
        return [int(p) for p in read_bytes(f"/proc/{pid}/task/{pid}/children").split()]
    except (OSError, ValueError):
        return []


def _ns_id(pid: int | str, ns: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/{ns}")
    except OSError:
        return ""


def container_processes(init_pid: int) -> list[int]:
    """Host pids of every process in the PID namespace whose init is ``init_pid``."""
    target = _ns_id(init_pid, "pid")
    if not target:
        return []
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and _ns_id(name, "pid") == target:
            out.append(int(name))
    return sorted(out)
