"""``sandbox history``, ``image inspect``, ``image prune``, ``system df``, ``system prune``."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from sandbox.cli._args import Parser, parse
from sandbox.cli.images import (
    _container_status,
    _in_use,
    fill_template,
    human_ago,
    human_size,
    render,
)
from sandbox.errors import SandboxError

__all__ = ["main", "inspect_image"]

_ZERO_TIME = "0001-01-01T00:00:00Z"


def _familiar(name: str) -> str:
    from sandbox.reference import parse_reference

    try:
        return parse_reference(name).familiar
    except SandboxError:
        return name


def inspect_image(engine: Any, image: Any) -> dict[str, Any]:
    """Docker's ``image inspect`` object."""
    cfg = image.config
    lowers = [engine.store.layer_diff(c) for c in reversed(image.chain_ids)]
    out: dict[str, Any] = {
        "Id": image.id,
        "RepoTags": [_familiar(n) for n in image.names],
        "RepoDigests": [_familiar(r) for r in image.repo_digests],
        "Parent": "", "Comment": _comment(cfg), "Created": cfg.get("created", _ZERO_TIME),
        "DockerVersion": cfg.get("docker_version", ""), "Author": cfg.get("author", ""),
        "Config": _docker_config(cfg.get("config") or {}),
        "Architecture": cfg.get("architecture", ""),
        **({"Variant": cfg["variant"]} if cfg.get("variant") else {}),
        "Os": cfg.get("os", ""),
        "Size": 0 if image.builtin else engine.images.unpacked_size(image),
        "GraphDriver": {"Data": {"LowerDir": ":".join(lowers[1:]) if len(lowers) > 1 else "",
                                 "UpperDir": lowers[0] if lowers else ""},
                        "Name": "sandbox-layers"},
        "RootFS": {"Type": "layers", "Layers": image.diff_ids},
        "Metadata": {"LastTagTime": _ZERO_TIME},
        "Descriptor": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": image.manifest_digest,
                       "size": 0 if image.builtin else engine.store.blob_size(
                           image.manifest_digest)},
    }
    return out


def _comment(cfg: dict[str, Any]) -> str:
    history = cfg.get("history") or []
    return str(history[-1].get("comment", "")) if history else ""


def _docker_config(run: dict[str, Any]) -> dict[str, Any]:
    base: dict[str, Any] = {"Hostname": "", "Domainname": "", "User": "", "AttachStdin": False,
                            "AttachStdout": False, "AttachStderr": False, "Tty": False,
                            "OpenStdin": False, "StdinOnce": False, "Env": None, "Cmd": None,
                            "Image": "", "Volumes": None, "WorkingDir": "", "Entrypoint": None,
                            "OnBuild": None, "Labels": None}
    base.update(run)
    return base


def cmd_inspect(argv: list[str]) -> int:
    p = Parser("image inspect", "Display detailed information on one or more images",
               usage="sandbox image inspect [OPTIONS] IMAGE [IMAGE...]")
    p.add_argument("-f", "--format", default="", help="Format output using a Go template")
    p.add_argument("images", nargs="+")
    args = parse(p, argv)
    from sandbox.containers import Engine

    engine = Engine()
    found, code = [], 0
    for ref in args.images:
        try:
            found.append(inspect_image(engine, engine.images.get(ref)))
        except SandboxError as err:
            sys.stderr.write(f"sandbox: {err.one_line()}\n")
            code = 1
    if args.format:
        sys.stdout.write("".join(fill_template(args.format, obj) + "\n" for obj in found))
    else:
        sys.stdout.write(json.dumps(found, indent=4) + "\n")
    return code


def _content_size(store: Any, layer: dict[str, Any]) -> int:
    """Bytes of a layer's files, as ``docker history`` shows them, read from its blob's tar
    headers (a layer not unpacked here: a built or loaded one); its blob size if unreadable."""
    from sandbox._layer_codec import ForwardReader, open_decompressed
    from sandbox._tarstream import TarStream
    from sandbox.errors import SandboxError

    total = 0
    try:
        with store.open_blob(str(layer["digest"])) as blob:
            tar = TarStream(ForwardReader(open_decompressed(blob)))
            while (member := tar.next()) is not None:
                if member.isreg():
                    total += member.size
    except (OSError, KeyError, SandboxError):
        return int(layer.get("size", 0))
    return total


def _history_rows(engine: Any, image: Any, no_trunc: bool, human: bool) -> list[dict[str, str]]:
    history = list(image.config.get("history") or [])
    if not history:
        history = [{"created": image.created, "created_by": ""} for _ in image.diff_ids]
    sizes = []
    chains = image.chain_ids
    for i, layer in enumerate(image.layers):
        has = i < len(chains) and engine.store.has_layer(chains[i])
        sizes.append(engine.store.layer_size(chains[i]) if has
                     else _content_size(engine.store, layer))
    rows = []
    layer_index = 0
    for item in history:
        size = 0
        if not item.get("empty_layer"):
            size = sizes[layer_index] if layer_index < len(sizes) else 0
            layer_index += 1
        created_by = str(item.get("created_by", ""))
        if not no_trunc and len(created_by) > 45:
            created_by = created_by[:44] + "…"
        created = str(item.get("created", ""))
        rows.append({"ID": "<missing>", "CreatedSince": human_ago(created) if human else created,
                     "CreatedAt": created, "CreatedBy": created_by,
                     "Size": human_size(size) if human else str(size),
                     "Comment": str(item.get("comment", ""))})
    rows.reverse()
    if rows:
        rows[0]["ID"] = image.id if no_trunc else image.id[7:19]
    return rows


def cmd_history(argv: list[str]) -> int:
    p = Parser("history", "Show the history of an image", usage="sandbox history [OPTIONS] IMAGE")
    p.add_argument("-H", "--human", action="store_true", default=True,
                   help="Print sizes and dates in human readable format (default true)")
    p.add_argument("--no-trunc", action="store_true", help="Don't truncate output")
    p.add_argument("-q", "--quiet", action="store_true", help="Only show image IDs")
    p.add_argument("--format", default="", help="Format output using a Go template")
    p.add_argument("image")
    args = parse(p, argv)
    from sandbox.containers import Engine

    engine = Engine()
    image = engine.images.get(args.image)
    rows = _history_rows(engine, image, args.no_trunc, args.human)
    if args.quiet:
        sys.stdout.write("".join(r["ID"] + "\n" for r in rows))
        return 0
    cols = ["ID", "CreatedSince", "CreatedBy", "Size", "Comment"]
    sys.stdout.write(render(args.format, rows,
                            ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"], cols))
    return 0


def _confirm(force: bool, what: str) -> bool:
    if force:
        return True
    sys.stdout.write(f"WARNING! This will remove {what}.\n"
                     "Are you sure you want to continue? [y/N] ")
    sys.stdout.flush()
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


def _prune_images(engine: Any, all_images: bool) -> tuple[list[str], int]:
    lines, reclaimed = engine.images.prune(all_images=all_images, in_use=set(_in_use(engine)))
    return list(lines), int(reclaimed)


def cmd_image_prune(argv: list[str]) -> int:
    p = Parser("image prune", "Remove unused images", usage="sandbox image prune [OPTIONS]")
    p.add_argument("-a", "--all", action="store_true",
                   help="Remove all unused images, not just dangling ones")
    p.add_argument("-f", "--force", action="store_true", help="Do not prompt for confirmation")
    p.add_argument("--filter", action="append", default=[], help="Provide filter values")
    args = parse(p, argv)
    what = ("all images without at least one container associated to them" if args.all
            else "all dangling images")
    if not _confirm(args.force, what):
        return 0
    from sandbox.containers import Engine

    lines, reclaimed = _prune_images(Engine(), args.all)
    if lines:
        sys.stdout.write("Deleted Images:\n" + "".join(x + "\n" for x in lines) + "\n")
    sys.stdout.write(f"Total reclaimed space: {human_size(reclaimed)}\n")
    return 0


def _dir_size(path: str) -> int:
    from sandbox.store import disk_usage

    return disk_usage(path) if os.path.isdir(path) else 0


def _df_rows(engine: Any) -> list[dict[str, str]]:
    used = _in_use(engine)
    usage = engine.images.disk_usage(set(used))
    cids = list(engine.store.iter_containers())
    running = [c for c in cids if _container_status(engine.store, c) == "running"]
    csize = {c: _dir_size(os.path.join(engine.store.container_dir(c), "upper")) for c in cids}
    vol_root = engine.store.path("volumes")
    vols = sorted(os.listdir(vol_root)) if os.path.isdir(vol_root) else []
    vsize = sum(_dir_size(os.path.join(vol_root, v)) for v in vols)

    def pct(part: int, whole: int) -> str:
        return f"{human_size(part)} ({part * 100 // whole}%)" if whole else human_size(part)

    stopped = sum(csize[c] for c in cids if c not in running)
    return [
        {"Type": "Images", "TotalCount": str(usage.images), "Active": str(usage.active),
         "Size": human_size(usage.size), "Reclaimable": pct(usage.reclaimable, usage.size)},
        {"Type": "Containers", "TotalCount": str(len(cids)), "Active": str(len(running)),
         "Size": human_size(sum(csize.values())),
         "Reclaimable": pct(stopped, sum(csize.values()))},
        {"Type": "Local Volumes", "TotalCount": str(len(vols)), "Active": "0",
         "Size": human_size(vsize), "Reclaimable": pct(vsize, vsize)},
        {"Type": "Build Cache", "TotalCount": "0", "Active": "0", "Size": "0B",
         "Reclaimable": "0B"},
    ]


def cmd_system_df(argv: list[str]) -> int:
    p = Parser("system df", "Show disk usage", usage="sandbox system df [OPTIONS]")
    p.add_argument("--format", default="", help="json, or a Go-style template")
    p.add_argument("-v", "--verbose", action="store_true", help="Show detailed information")
    args = parse(p, argv)
    from sandbox.containers import Engine

    engine = Engine()
    rows = _df_rows(engine)
    cols = ["Type", "TotalCount", "Active", "Size", "Reclaimable"]
    sys.stdout.write(render(args.format, rows,
                            ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"], cols))
    if args.verbose and not args.format:
        from sandbox.cli.images import table

        images = engine.images.list()
        sys.stdout.write("\nImages space usage:\n\n" + table(
            ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"],
            [[*(_familiar(n).rpartition(":")[::2] if image.names else ("<none>", "<none>")),
              image.id[7:19], human_ago(image.created),
              human_size(engine.images.unpacked_size(image))]
             for image in images for n in (image.names or ("",))]))
    return 0


def cmd_system_prune(argv: list[str]) -> int:
    p = Parser("system prune", "Remove unused data", usage="sandbox system prune [OPTIONS]")
    p.add_argument("-a", "--all", action="store_true", help="Remove all unused images")
    p.add_argument("-f", "--force", action="store_true", help="Do not prompt for confirmation")
    p.add_argument("--volumes", action="store_true", help="Prune anonymous volumes")
    args = parse(p, argv)
    what = "all stopped containers, " + ("all images without at least one container "
                                         "associated to them" if args.all
                                         else "all dangling images")
    if not _confirm(args.force, what):
        return 0
    from sandbox.containers import Engine

    engine = Engine()
    removed = []
    before = _dir_size(engine.store.containers_dir())
    for cid in list(engine.store.iter_containers()):
        if _container_status(engine.store, cid) not in ("running", "paused"):
            engine.remove_dir(cid)
            removed.append(cid)
    reclaimed = max(0, before - _dir_size(engine.store.containers_dir()))
    if removed:
        sys.stdout.write("Deleted Containers:\n" + "".join(c + "\n" for c in removed) + "\n")
    lines, image_bytes = _prune_images(engine, args.all)
    if lines:
        sys.stdout.write("Deleted Images:\n" + "".join(x + "\n" for x in lines) + "\n")
    sys.stdout.write(f"Total reclaimed space: {human_size(reclaimed + image_bytes)}\n")
    return 0


def main(command: str, argv: list[str]) -> int:
    return {"history": cmd_history, "image inspect": cmd_inspect,
            "image prune": cmd_image_prune, "system df": cmd_system_df,
            "system prune": cmd_system_prune}[command](argv)
