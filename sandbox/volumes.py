"""Named and anonymous volumes: ``volumes/<name>/{_data/, meta.json}`` in the store.

A volume is created on first use (``-v NAME:/path``, ``--mount type=volume``, the image's
``VOLUME``) and, when new, filled with what the image has at the mount path, as Docker does.
Volume files may belong to the subordinate range: copies and removals run in the user
namespace (``sandbox.runtime.userns``).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from typing import TYPE_CHECKING, Any

from sandbox._cstate import read_hostconfig, rfc3339
from sandbox._record import replace as record_replace
from sandbox.errors import SandboxError, SpecError
from sandbox.spec import Mount

if TYPE_CHECKING:
    from sandbox.containers import Engine
    from sandbox.images import Image

__all__ = ["create_volume", "list_volumes", "inspect_volume", "remove_volume", "prune_volumes",
           "remove_volumes", "prepare_mounts", "volume_users", "VolumeNotFound"]


class VolumeNotFound(SandboxError):
    """No volume of that name."""


def _meta_path(engine: Engine, name: str) -> str:
    return os.path.join(engine.store.volume_dir(name), "meta.json")


def _check_name(name: str) -> None:
    import re

    if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+", name):
        raise SpecError(f'invalid volume name "{name}"',
                        hint="use [a-zA-Z0-9][a-zA-Z0-9_.-], at least two characters")


def create_volume(engine: Engine, name: str | None = None, *, labels: dict[str, str] | None = None,
                  anonymous: bool = False) -> tuple[str, bool]:
    """(name, created): an existing volume of that name is reused, as Docker does."""
    engine.store.ensure()
    if name:
        _check_name(name)
    name = name or os.urandom(32).hex()
    vdir = engine.store.volume_dir(name)
    created = False
    try:
        os.mkdir(vdir, 0o700)
        created = True
    except FileExistsError:
        pass
    os.makedirs(os.path.join(vdir, "_data"), mode=0o755, exist_ok=True)
    if created or not os.path.exists(_meta_path(engine, name)):
        meta = {"Name": name, "CreatedAt": rfc3339(), "Labels": labels or {}, "Options": {},
                "Anonymous": anonymous}
        engine.store.write_json(_meta_path(engine, name), meta)
    return name, created


def _meta(engine: Engine, name: str) -> dict[str, Any]:
    try:
        data: dict[str, Any] = engine.store.read_json(_meta_path(engine, name))
        return data
    except (OSError, ValueError):
        if os.path.isdir(engine.store.volume_dir(name)):
            return {"Name": name, "CreatedAt": "", "Labels": {}, "Options": {}}
        raise VolumeNotFound(f"no such volume: {name}") from None


def inspect_volume(engine: Engine, name: str) -> dict[str, Any]:
    meta = _meta(engine, name)
    return {"CreatedAt": meta.get("CreatedAt", ""), "Driver": "local",
            "Labels": meta.get("Labels") or {},
            "Mountpoint": os.path.join(engine.store.volume_dir(name), "_data"), "Name": name,
            "Options": meta.get("Options") or {}, "Scope": "local"}


def list_volumes(engine: Engine) -> list[dict[str, Any]]:
    try:
        names = sorted(os.listdir(engine.store.path("volumes")))
    except FileNotFoundError:
        return []
    return [inspect_volume(engine, n) for n in names if not n.startswith(".")]


def volume_users(engine: Engine) -> dict[str, list[str]]:
    """volume name → ids of the containers that use it."""
    users: dict[str, list[str]] = {}
    for cid in engine.store.iter_containers():
        for v in read_hostconfig(engine.store.container_dir(cid)).get("volumes", []):
            users.setdefault(v["name"], []).append(cid)
    return users


def _rm_tree(root: str, path: str) -> None:
    from sandbox.store import rm_rf

    rm_rf(path, under=root)


def _delete(engine: Engine, name: str) -> None:
    vdir = engine.store.volume_dir(name)
    try:
        engine.store.rm_rf(vdir)
    except (OSError, RecursionError):  # subordinate-range files: see lifecycle's removal
        from sandbox.runtime.userns import run_in_userns

        run_in_userns(_rm_tree, engine.store.root, vdir, mapping=engine.mapping)


def remove_volume(engine: Engine, name: str, *, force: bool = False) -> None:
    _meta(engine, name)
    users = volume_users(engine).get(name)
    if users and not force:
        raise SandboxError(f"remove {name}: volume is in use - [{', '.join(users)}]",
                           hint="remove the containers first, or use -f")
    _delete(engine, name)


def remove_volumes(engine: Engine, names: list[str]) -> None:
    """Quietly remove volumes no other container uses (``rm -v``, ``--rm``)."""
    users = volume_users(engine)
    for name in names:
        if users.get(name):
            continue
        try:
            _delete(engine, name)
        except (OSError, SandboxError):
            pass


def prune_volumes(engine: Engine, *, all_: bool = False) -> list[str]:
    users = volume_users(engine)
    removed = []
    for vol in list_volumes(engine):
        name = vol["Name"]
        if users.get(name):
            continue
        if not all_ and not _meta(engine, name).get("Anonymous"):
            continue
        _delete(engine, name)
        removed.append(name)
    return removed


# -- at create time ---------------------------------------------------------------------------

def _copy_tree(src: str, dest: str) -> None:
    """Copy ``src``'s contents into ``dest`` keeping owners and modes (in the user ns)."""
    for entry in os.scandir(src):
        s, d = entry.path, os.path.join(dest, entry.name)
        st = entry.stat(follow_symlinks=False)
        if os.path.lexists(d) and not (stat.S_ISDIR(st.st_mode) and os.path.isdir(d)):
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(s), d)
        elif entry.is_dir(follow_symlinks=False):
            os.makedirs(d, exist_ok=True)
            _copy_tree(s, d)
        elif stat.S_ISREG(st.st_mode):
            shutil.copy2(s, d)
        else:
            continue
        try:
            os.lchown(d, st.st_uid, st.st_gid)
            if not stat.S_ISLNK(st.st_mode):
                os.chmod(d, stat.S_IMODE(st.st_mode))
        except OSError:
            pass


def _fill(lowers: list[str], rel: str, data: str) -> None:
    from sandbox._paths import resolve_in_root

    for lower in reversed(lowers):  # bottom layer first; upper layers win
        src = resolve_in_root(lower, rel)
        if os.path.isdir(src) and not os.path.islink(src):
            _copy_tree(src, data)
            st = os.stat(src)
            os.chown(data, st.st_uid, st.st_gid)
            os.chmod(data, stat.S_IMODE(st.st_mode))


def prepare_mounts(engine: Engine, image: Image, mounts: tuple[Mount, ...]
                   ) -> tuple[tuple[Mount, ...], list[dict[str, Any]]]:
    """Volumes become binds of their ``_data``; the image's VOLUMEs become anonymous ones.

    Returns the mounts for the spec and the volume records for ``hostconfig.json``.
    """
    out: list[Mount] = []
    records: list[dict[str, Any]] = []
    targets = {os.path.normpath(m.target) for m in mounts}
    image_vols = [v for v in (image.run_config.get("Volumes") or {})
                  if os.path.normpath(v) not in targets]
    wanted = list(mounts) + [Mount(target=v, type="volume") for v in image_vols]
    fills: list[tuple[str, str]] = []
    for m in wanted:
        if m.type != "volume":
            out.append(m)
            continue
        anonymous = not m.source
        name, created = create_volume(engine, m.source or None, anonymous=anonymous)
        data = os.path.join(engine.store.volume_dir(name), "_data")
        if created and "nocopy" not in m.options and not image.builtin:
            fills.append((m.target, data))
        out.append(record_replace(m, type="bind", source=data,
                                       options=tuple(o for o in m.options if o != "nocopy")))
        records.append({"name": name, "target": m.target, "anonymous": anonymous,
                        "readonly": m.readonly})
    if fills:
        lowers = engine.images.layer_dirs(image)
        from sandbox.runtime.userns import run_in_userns

        for target, data in fills:
            run_in_userns(_fill, lowers, target, data, mapping=engine.mapping)
    return tuple(out), records


def volume_json(name: str) -> str:
    return json.dumps({"Name": name})
