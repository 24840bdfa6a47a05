"""``sandbox info`` and ``sandbox version``."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from typing import Any

from sandbox.cli._args import Parser, parse

__all__ = ["main", "collect_info"]


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _cgroup_version() -> str:
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return "2"
    if os.path.isdir("/sys/fs/cgroup/unified"):
        return "1 (hybrid)"
    return "1"


def collect_info() -> dict[str, Any]:
    """Everything ``sandbox info`` reports, as data."""
    from sandbox.drivers import select_driver
    from sandbox.runtime.idmap import detect_mapping
    from sandbox.store import Store

    store = Store()
    mapping = detect_mapping()
    userns = {
        "max_user_namespaces": _read("/proc/sys/user/max_user_namespaces"),
        "unprivileged_userns_clone": _read("/proc/sys/kernel/unprivileged_userns_clone"),
        "apparmor_restrict_unprivileged_userns":
            _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"),
    }
    try:
        choice = select_driver(store, every_probe=True)
        driver: dict[str, Any] = {"name": choice.name, "reason": choice.reason,
                                  "probes": choice.probes}
    except Exception as exc:  # noqa: BLE001 - info reports, never fails
        driver = {"name": "none", "reason": str(exc), "probes": {}}
    return {
        "version": _version(),
        "kernel": platform.release(),
        "os": _os_name(),
        "architecture": platform.machine(),
        "python": platform.python_version(),
        "user": {"uid": os.getuid(), "gid": os.getgid()},
        "idmap": {"mode": mapping.mode, "reason": mapping.reason,
                  "uid_map": [[m.container_id, m.host_id, m.size] for m in mapping.uid_map],
                  "gid_map": [[m.container_id, m.host_id, m.size] for m in mapping.gid_map]},
        "user_namespaces": userns,
        "storage_driver": driver,
        "fuse": {"device": os.path.exists("/dev/fuse"),
                 "usable": os.access("/dev/fuse", os.R_OK | os.W_OK),
                 "fusermount3": shutil.which("fusermount3") or ""},
        "cgroup_version": _cgroup_version(),
        "cgroup_limits": _cgroup_limits(),
        "network": {"slirp4netns": shutil.which("slirp4netns") or "",
                    "pasta": shutil.which("pasta") or ""},
        "store": store.root,
    }


def _cgroup_limits() -> dict[str, Any]:
    from sandbox import _cgroups

    deleg = _cgroups.find_delegation()
    if deleg is None:
        return {"delegated": "", "controllers": [], "reason": _cgroups.reason()}
    return {"delegated": deleg.base, "controllers": sorted(deleg.controllers), "reason": ""}


def _os_name() -> str:
    text = _read("/etc/os-release") or ""
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.partition("=")[2].strip('"')
    return "Linux"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("rootless-sandbox")
    except Exception:  # noqa: BLE001
        return "0+unknown"


def _text(info: dict[str, Any]) -> str:
    idm, drv, ns = info["idmap"], info["storage_driver"], info["user_namespaces"]

    def maps(rows: list[list[int]]) -> str:
        return ", ".join(f"{a}->{b} ({c})" for a, b, c in rows)

    lines = [
        f"Version:          {info['version']}",
        f"Kernel:           {info['kernel']} ({info['architecture']})",
        f"Operating system: {info['os']}",
        f"Python:           {info['python']}",
        f"Store:            {info['store']}",
        f"ID mapping:       {idm['mode']}",
        f"  {idm['reason']}",
        f"  uid map: {maps(idm['uid_map'])}",
        f"  gid map: {maps(idm['gid_map'])}",
        "User namespaces:",
        f"  user.max_user_namespaces: {ns['max_user_namespaces']}",
    ]
    if ns["unprivileged_userns_clone"] is not None:
        lines.append(f"  kernel.unprivileged_userns_clone: {ns['unprivileged_userns_clone']}")
    if ns["apparmor_restrict_unprivileged_userns"] is not None:
        lines.append("  kernel.apparmor_restrict_unprivileged_userns: "
                     f"{ns['apparmor_restrict_unprivileged_userns']}")
    lines += [
        f"Storage driver:   {drv['name']}",
        f"  {drv['reason']}",
    ]
    for name, result in drv.get("probes", {}).items():
        lines.append(f"  probe {name}: {result}")
    fuse = info["fuse"]
    lines += [
        f"FUSE:             /dev/fuse {'usable' if fuse['usable'] else 'not usable'}, "
        f"fusermount3 {fuse['fusermount3'] or 'missing'}",
        f"Cgroups:          v{info['cgroup_version']}; limits "
        + (f"enforced under {info['cgroup_limits']['delegated']} "
           f"({' '.join(info['cgroup_limits']['controllers']) or 'no controllers'})"
           if info["cgroup_limits"]["delegated"]
           else f"not enforced: {info['cgroup_limits']['reason']}"),
        "Outbound network: " + (", ".join(k for k, v in info["network"].items() if v)
                                or "none (install slirp4netns or passt)"),
    ]
    return "\n".join(lines) + "\n"


def main(command: str, argv: list[str]) -> int:
    if command == "version":
        p = Parser("version", "Show the sandbox version information")
        parse(p, argv)
        sys.stdout.write(f"sandbox version {_version()} (Python {platform.python_version()})\n")
        return 0
    p = Parser("info", "Display system-wide information")
    p.add_argument("-f", "--format", default="",
                   help="json, a Go template over the json's fields ('{{.idmap.mode}}'), or "
                        "text (the default)")
    args = parse(p, argv)
    info = collect_info()
    if args.format == "json" or args.format == "{{json .}}":
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
    elif args.format:
        from sandbox._template import render as format_template

        sys.stdout.write(format_template(args.format, info) + "\n")
    else:
        sys.stdout.write(_text(info))
    return 0
