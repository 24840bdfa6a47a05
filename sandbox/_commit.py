"""The host half of ``diff``, ``cp``, ``export`` and ``commit``.

``cp``/``export`` run ``python -m sandbox._nsexec`` (chrooted in the container: see there) and
move a tar stream through a pipe; ``diff`` and ``commit`` read the container's writable layer
(``upper/``), inside the user namespace when its files belong to the subordinate range.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sandbox._cstate import read_hostconfig, rfc3339
from sandbox.errors import SandboxError

if TYPE_CHECKING:
    from sandbox.containers import Engine
    from sandbox.images import Image

__all__ = ["container_diff", "copy_from_container", "copy_into_container", "run_file_helper",
           "commit_container"]

_RUNTIME_FILES = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf")
_RUNTIME_DIRS = ("/dev", "/proc", "/sys")


# -- diff -------------------------------------------------------------------------------------

def _diff(upper: str, lowers: list[str]) -> list[tuple[str, str]]:
    from sandbox.layers import diff_upper

    return diff_upper(Path(upper), [Path(p) for p in lowers])


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_mode, a.st_uid, a.st_gid) == (b.st_mode, b.st_uid, b.st_gid) and (
        stat.S_ISDIR(a.st_mode) or (a.st_size, a.st_mtime_ns) == (b.st_size, b.st_mtime_ns))


def _diff_copy(upper: str, lowers: list[str]) -> list[tuple[str, str]]:
    """The ``copy`` driver's upper is the whole flattened tree: compare it with the image."""
    from sandbox._overlay_tree import merged_children, merged_lookup

    layers = [Path(p) for p in lowers]
    changes: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(upper):
        rel_dir = os.path.relpath(dirpath, upper)
        rel_dir = "" if rel_dir == "." else rel_dir
        for name in dirnames + filenames:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            st = os.lstat(os.path.join(dirpath, name))
            old = merged_lookup(layers, rel)
            if old is None:
                changes["/" + rel] = "A"
            elif not _same(st, old) or (stat.S_ISLNK(st.st_mode) and os.readlink(
                    os.path.join(dirpath, name)) != _lower_link(layers, rel)):
                changes["/" + rel] = "C"
        if rel_dir == "" or merged_lookup(layers, rel_dir) is not None:
            for gone in merged_children(layers, rel_dir) - set(dirnames + filenames):
                changes[f"/{rel_dir}/{gone}" if rel_dir else "/" + gone] = "D"
    for path in list(changes):
        parent = os.path.dirname(path)
        while parent != "/" and parent not in changes:
            changes[parent] = "C"
            parent = os.path.dirname(parent)
    return sorted(((k, p) for p, k in changes.items()), key=lambda i: os.fsencode(i[1]))


def _lower_link(layers: list[Path], rel: str) -> str:
    for layer in layers:
        try:
            return os.readlink(layer / rel)
        except OSError:
            continue
    return ""


def container_diff(engine: Engine, cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """Docker's ``diff``: A/C/D of the writable layer, minus what the runtime itself made."""
    from sandbox._control import in_layer_userns, writable_layer

    spec = cfg["spec"]
    rootfs = spec["rootfs"]
    lowers = ["/"] if rootfs.get("host") else list(rootfs["lowers"])
    fn = _diff_copy if rootfs.get("driver") == "copy" else _diff
    layer = writable_layer(engine.store.container_dir(cfg["id"]), rootfs)
    if layer is None:  # a layer in memory, gone with the container
        return []
    try:
        changes = fn(layer[0], lowers)
    except PermissionError:
        changes = in_layer_userns(engine, layer, rootfs, fn, lowers)
    hidden = set(_RUNTIME_FILES) | {m["target"] for m in spec.get("mounts", [])}
    kept = [(k, p) for k, p in changes if p not in hidden
            and not any(p == d or p.startswith(d + "/") for d in _RUNTIME_DIRS)]
    dropped = {p for _, p in changes} - {p for _, p in kept}
    if rootfs.get("host"):
        # the host image's top-level dirs are mount points we made in the upper: changed only
        # when something below them changed
        kept = [(k, p) for k, p in kept if not (k == "C" and p.count("/") == 1 and not any(
            q.startswith(p + "/") for _, q in kept))]
    out = []
    for kind, path in kept:
        if kind == "C" and any(d.startswith(path + "/") for d in dropped) and not any(
                q.startswith(path + "/") for _, q in kept):
            continue
        out.append((kind, path))
    return out


# -- the file helper ----------------------------------------------------------------------------

def _helper(req: dict[str, Any], **kw: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "sandbox._nsexec", json.dumps(req)], **kw)


def _fail(proc: subprocess.Popen[bytes], fallback: str) -> SandboxError:
    err = ""
    if proc.stderr:
        err = proc.stderr.read().decode(errors="replace").strip()
    proc.wait()
    _close(proc)
    msg = err.splitlines()[-1] if err else fallback
    return SandboxError(msg.removeprefix("sandbox: "))


def run_file_helper(req: dict[str, Any], *, stdout: IO[bytes] | None) -> None:
    proc = _helper(req, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    shutil.copyfileobj(proc.stdout, stdout or sys.stdout.buffer, 1 << 20)
    proc.stdout.close()
    if proc.wait() != 0:
        raise _fail(proc, f"{req['op']} failed")
    _close(proc)


def copy_from_container(req: dict[str, Any], dest: str, *, out: IO[bytes] | None) -> None:
    from sandbox._cp import CpError, placement, read_header, safe_extract

    proc = _helper(req, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        header = read_header(proc.stdout)
        if not header.get("ok"):
            raise _fail(proc, f"could not copy {req['path']}")
        if dest == "-":
            shutil.copyfileobj(proc.stdout, out or sys.stdout.buffer, 1 << 20)
        else:
            try:
                into, rename = placement(src_is_dir=header["type"] == "dir",
                                         contents_only=bool(header.get("contents_only")),
                                         dest=dest)
            except CpError as exc:
                raise SandboxError(exc.message) from None
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                safe_extract(tar, into, rename_top=(header["base"], rename) if rename else None)
    except BaseException:
        _abort(proc)
        raise
    proc.stdout.close()
    if proc.wait() != 0:
        raise _fail(proc, f"could not copy {req['path']}")
    _close(proc)


def copy_into_container(req: dict[str, Any], src: str, *, stdin: IO[bytes] | None) -> None:
    from sandbox._cp import add_to_tar

    if src == "-":
        req["raw"] = True
    else:
        if not os.path.lexists(src):
            raise SandboxError(f"could not find the file {src} on the host")
        req.update(src_is_dir=os.path.isdir(src) and not os.path.islink(src),
                   contents_only=src.endswith("/."),
                   src_base=os.path.basename(os.path.normpath(src)))
    proc = _helper(req, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    try:
        if src == "-":
            shutil.copyfileobj(stdin or sys.stdin.buffer, proc.stdin, 1 << 20)
        else:
            with tarfile.open(fileobj=proc.stdin, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                if req["contents_only"] and req["src_is_dir"]:
                    for child in sorted(os.listdir(src)):
                        add_to_tar(tar, os.path.join(src, child), child, owner_root=True)
                else:
                    add_to_tar(tar, src, req["src_base"], owner_root=True)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    except BaseException:
        _abort(proc)
        raise
    if proc.wait() != 0:
        raise _fail(proc, f"could not copy to {req['path']}")
    _close(proc)


def _abort(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    _close(proc)
    proc.wait()


def _close(proc: subprocess.Popen[bytes]) -> None:
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is not None and not f.closed:
            try:
                f.close()
            except BrokenPipeError:
                pass


# -- commit -----------------------------------------------------------------------------------

def _write_layer(upper: str, out_path: str) -> Any:
    from sandbox.layers import write_layer

    with open(out_path, "wb") as f:
        return write_layer(Path(upper), f, compression="gzip")


def _apply_changes(run_cfg: dict[str, Any], changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        if key in ("Labels", "ExposedPorts", "Volumes") and isinstance(value, dict):
            run_cfg[key] = {**(run_cfg.get(key) or {}), **value}
        elif key == "Env":
            env = {e.partition("=")[0]: e for e in run_cfg.get("Env") or []}
            env.update({e.partition("=")[0]: e for e in value})
            run_cfg["Env"] = list(env.values())
        else:
            run_cfg[key] = value


def commit_container(engine: Engine, cfg: dict[str, Any], name: str | None, *, message: str,
                     changes: dict[str, Any], author: str = "") -> Image:
    """The writable layer becomes a new layer on top of the container's image."""
    from sandbox.images import CONFIG_MEDIA_TYPE, MANIFEST_MEDIA_TYPE

    spec = cfg["spec"]
    if spec["rootfs"].get("host"):
        raise SandboxError("cannot commit a container of the built-in image host",
                           hint="its base is the host's filesystem, not a layer")
    from sandbox._control import in_layer_userns, writable_layer

    image = engine.images.get(spec["image_id"])
    layer = writable_layer(engine.store.container_dir(cfg["id"]), spec["rootfs"])
    if layer is None:
        raise SandboxError("cannot commit the container: its writable layer was in memory and "
                           "is gone with it")
    fd, tmp = engine.store.mkstemp(suffix=".layer")
    os.close(fd)
    try:
        digests = in_layer_userns(engine, layer, spec["rootfs"], _write_layer, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, engine.store.blob_path(digests.digest))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    hc = read_hostconfig(spec["container_dir"])
    now = rfc3339()
    config = copy.deepcopy(image.config)
    run_cfg = config.setdefault("config", {})
    run_cfg["Env"] = list(spec.get("env") or [])
    if hc.get("cmd"):
        run_cfg["Cmd"] = list(hc["cmd"])
    if spec.get("labels"):
        run_cfg["Labels"] = {**(run_cfg.get("Labels") or {}), **spec["labels"]}
    _apply_changes(run_cfg, changes)
    config["created"] = now
    if author:
        config["author"] = author
    config.setdefault("rootfs", {"type": "layers", "diff_ids": []})["diff_ids"] = [
        *image.diff_ids, digests.diff_id]
    entry = {"created": now, "created_by": " ".join(spec.get("argv") or [])}
    if message:
        entry["comment"] = message
    if author:
        entry["author"] = author
    config["history"] = [*config.get("history", []), entry]
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_digest = engine.store.put_blob(config_bytes)
    manifest = {
        "schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest,
                   "size": len(config_bytes)},
        "layers": [*image.layers, {"mediaType": digests.media_type, "digest": digests.digest,
                                   "size": digests.size}],
    }
    names = []
    if name:
        from sandbox.reference import parse_reference

        names = [str(parse_reference(name))]
    return engine.images.add(json.dumps(manifest, sort_keys=True,
                                        separators=(",", ":")).encode(), names)
