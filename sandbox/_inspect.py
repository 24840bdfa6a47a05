"""``inspect`` in Docker's JSON shape, ``top`` and ``stats`` from ``/proc``."""

from __future__ import annotations

import os
import time

from sandbox import _cstate as cs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from sandbox.containers import Engine
    from sandbox.lifecycle import ContainerState

__all__ = ["inspect_container", "top_rows", "sample_stats"]

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _created(cfg: dict[str, Any]) -> str:
    return cs.rfc3339(float(cfg.get("created") or 0))


def inspect_container(engine: Engine, cid: str, cfg: dict[str, Any], st: dict[str, Any],
                      hc: dict[str, Any]) -> dict[str, Any]:
    spec = cfg["spec"]
    status = st.get("status", "created")
    live = status in ("running", "paused")
    restarting = status == "exited" and bool(st.get("restarting"))  # in its back-off
    if restarting:
        status = "restarting"  # as Docker shows a container between restarts
    ports: dict[str, Any] = {}
    for p in hc.get("ports", []):
        ports.setdefault(f"{p['container_port']}/{p['proto']}", None)
    for key, binds in (st.get("ports") or {}).items():
        if live:
            ports[key] = [{"HostIp": ip, "HostPort": str(hp)} for ip, hp in binds]
    mounts = []
    vol_targets = {v["target"]: v for v in hc.get("volumes", [])}
    for m in spec.get("mounts", []):
        v = vol_targets.get(m["target"])
        if v is not None:
            mounts.append({"Type": "volume", "Name": v["name"], "Source": m["source"],
                           "Destination": m["target"], "Driver": "local", "Mode": "z",
                           "RW": not m.get("readonly"), "Propagation": ""})
        else:
            mounts.append({"Type": m["type"], "Source": m.get("source", ""),
                           "Destination": m["target"], "Mode": "",
                           "RW": not m.get("readonly"), "Propagation": "rprivate"})
    argv = list(spec.get("argv") or [])
    rootfs = spec.get("rootfs", {})
    return {
        "Id": cid, "Created": _created(cfg), "Path": argv[0] if argv else "",
        "Args": argv[1:],
        "State": {
            "Status": status, "Running": status == "running" or status == "paused",
            "Paused": status == "paused", "Restarting": restarting, "OOMKilled": False,
            "Dead": status == "dead", "Pid": int(st.get("pid") or 0) if live else 0,
            "ExitCode": int(st.get("exit_code") or 0), "Error": st.get("error", ""),
            "StartedAt": st.get("started_at") or "0001-01-01T00:00:00Z",
            "FinishedAt": st.get("finished_at") or "0001-01-01T00:00:00Z",
        },
        "Image": spec.get("image_id", ""), "Name": "/" + str(cfg.get("name", "")),
        "RestartCount": int(st.get("restart_count") or 0), "Driver": rootfs.get("driver", ""),
        "Platform": "linux",
        "ResolvConfPath": os.path.join(spec["container_dir"], "resolv.conf"),
        "HostnamePath": os.path.join(spec["container_dir"], "hostname"),
        "HostsPath": os.path.join(spec["container_dir"], "hosts"),
        "LogPath": os.path.join(spec["container_dir"], "log.json"),
        "HostConfig": {
            "NetworkMode": spec.get("network", "none"), "AutoRemove": bool(spec.get("remove")),
            "PortBindings": {f"{p['container_port']}/{p['proto']}": [
                {"HostIp": p["host_ip"], "HostPort": str(p["host_port"] or "")}]
                for p in hc.get("ports", [])},
            "PublishAllPorts": bool(hc.get("publish_all")),
            "RestartPolicy": {"Name": (hc.get("restart") or "no").partition(":")[0],
                              "MaximumRetryCount": int((hc.get("restart") or "no:0").partition(
                                  ":")[2] or 0)},
            "ReadonlyRootfs": bool(spec.get("readonly_rootfs")), "Init": bool(hc.get("init")),
            "Binds": [f"{m['source']}:{m['target']}" + (":ro" if m.get("readonly") else "")
                      for m in spec.get("mounts", []) if m["type"] == "bind"
                      and m["target"] not in vol_targets],
            "Tmpfs": {m["target"]: ",".join(m.get("options", [])) for m in spec.get(
                "mounts", []) if m["type"] == "tmpfs"},
            "ExtraHosts": hc.get("add_hosts") or None, "Dns": hc.get("dns") or [],
            "DnsSearch": hc.get("dns_search") or [],
            "Memory": int(hc.get("memory") or 0), "NanoCpus": int(hc.get("nano_cpus") or 0),
            "PidsLimit": int(hc.get("pids_limit") or 0) or None,
            "Ulimits": [{"Name": u["name"], "Soft": u["soft"], "Hard": u["hard"]}
                        for u in hc.get("ulimits", [])],
            "CapAdd": None, "CapDrop": None, "Privileged": False,
            "LogConfig": {"Type": "json-file", "Config": {}},
        },
        "GraphDriver": {"Name": rootfs.get("driver", ""), "Data": {
            "LowerDir": ":".join(rootfs.get("lowers", [])), "UpperDir": rootfs.get("upper", ""),
            "WorkDir": rootfs.get("work", ""), "MergedDir": rootfs.get("mountpoint", "")}},
        "Mounts": mounts,
        "Config": {
            "Hostname": spec.get("hostname", ""), "User": spec.get("user", ""),
            "AttachStdin": False, "Tty": bool(spec.get("tty")),
            "OpenStdin": bool(spec.get("interactive")),
            "ExposedPorts": {k: {} for k in set(hc.get("exposed", [])) | set(ports)} or None,
            "Env": list(spec.get("env", [])), "Cmd": hc.get("cmd") or argv,
            "Image": spec.get("image", ""),
            "Volumes": {v: {} for v in hc.get("image_volumes", [])} or None,
            "WorkingDir": spec.get("workdir", ""), "Entrypoint": None,
            "Labels": {**(hc.get("labels_image") or {}), **(spec.get("labels") or {})},
            "StopSignal": hc.get("stop_signal") or hc.get("image_stop_signal") or "SIGTERM",
            "StopTimeout": hc.get("stop_timeout"),
        },
        "NetworkSettings": {"Ports": ports, "IPAddress": "", "Networks": {
            spec.get("network", "none"): {}}},
    }


# -- /proc ------------------------------------------------------------------------------------

def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read().decode(errors="replace")
    return data[data.rfind(")") + 2:].split()


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return ""
    return " ".join(a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0"))


def _uid_name(pid: int) -> str:
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return "?"
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def top_rows(init_pid: int) -> tuple[list[str], list[list[str]]]:
    """``ps -ef``-shaped rows for the container's processes (host pids, as Docker's top)."""
    with open("/proc/uptime") as f:
        boot = time.time() - float(f.read().split()[0])
    rows = []
    for pid in cs.container_processes(init_pid):
        try:
            fields = _stat(pid)
        except OSError:
            continue
        start = boot + int(fields[19]) / _TICKS
        cpu_s = (int(fields[11]) + int(fields[12])) // _TICKS
        tty = "?" if int(fields[4]) == 0 else f"pts/{os.minor(int(fields[4]))}"
        rows.append([_uid_name(pid), str(pid), fields[1], "0",
                     time.strftime("%H:%M", time.localtime(start)), tty,
                     time.strftime("%H:%M:%S", time.gmtime(cpu_s)), _cmdline(pid) or f"[{pid}]"])
    return ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"], rows


def _cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            f = _stat(pid)
            total += int(f[11]) + int(f[12])
        except (OSError, IndexError, ValueError):
            continue
    return total


def _mem(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


def _net(init_pid: int) -> tuple[int, int]:
    rx = tx = 0
    try:
        with open(f"/proc/{init_pid}/net/dev") as f:
            for line in f.readlines()[2:]:
                _, _, rest = line.partition(":")
                cols = rest.split()
                rx += int(cols[0])
                tx += int(cols[8])
    except (OSError, IndexError, ValueError):
        pass
    return rx, tx


def _blk(pids: list[int]) -> tuple[int, int]:
    r = w = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/io") as f:
                for line in f:
                    k, _, v = line.partition(":")
                    if k == "read_bytes":
                        r += int(v)
                    elif k == "write_bytes":
                        w += int(v)
        except (OSError, ValueError):
            continue
    return r, w


def _mem_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def sample_stats(targets: list[ContainerState], interval: float,
                 cgroups: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One ``stats --no-stream`` sample per container: CPU over ``interval``, memory, net, io.

    From the container's cgroup v2 where it has one (``cgroups``: id → path), else summed over
    its processes from /proc.
    """
    from sandbox._cgroups import read_stats

    cgroups = cgroups or {}

    def cpu_usec(s: ContainerState) -> float:
        got = read_stats(cgroups.get(s.id, ""))
        if got is not None and "cpu_usec" in got:
            return float(got["cpu_usec"])
        return _cpu_ticks(cs.container_processes(s.init_pid)) / _TICKS * 1e6

    first = {s.id: cpu_usec(s) for s in targets}
    t0 = time.monotonic()
    if targets:
        time.sleep(interval)
    dt = max(time.monotonic() - t0, 1e-6)
    total = _mem_total()
    out = []
    for s in targets:
        pids = cs.container_processes(s.init_pid)
        cpu = (cpu_usec(s) - first[s.id]) / 1e6 / dt * 100
        got = read_stats(cgroups.get(s.id, "")) or {}
        mem = got.get("memory", _mem(pids))
        limit = got.get("memory_limit") or total
        rx, tx = _net(s.init_pid)
        br, bw = _blk(pids)
        out.append({"ID": s.id, "Name": s.name, "CPUPerc": cpu, "MemUsage": mem,
                    "MemLimit": limit, "MemPerc": mem / limit * 100 if limit else 0.0,
                    "NetRx": rx, "NetTx": tx, "BlockRead": br, "BlockWrite": bw,
                    "PIDs": got.get("pids", len(pids))})
    return out
