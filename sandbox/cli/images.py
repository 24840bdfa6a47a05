"""``sandbox import``, ``images``, ``rmi``, ``tag``."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from sandbox.cli._args import Parser, parse
from sandbox.errors import ImageNotFound, SandboxError, UsageError

__all__ = ["main", "human_size", "human_ago"]


def human_size(n: float) -> str:
    """Docker's units: 1000-based, three significant digits (``5.6MB``)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1000
    return f"{n}B"


def human_ago(created: str | float) -> str:
    if isinstance(created, str):
        if not created:
            return "N/A"
        try:
            import calendar

            ts = calendar.timegm(time.strptime(created[:19], "%Y-%m-%dT%H:%M:%S"))
        except ValueError:
            return "N/A"
    else:
        ts = int(created)
    delta = max(0.0, time.time() - ts)
    for secs, unit in ((365 * 86400, "year"), (30 * 86400, "month"), (7 * 86400, "week"),
                       (86400, "day"), (3600, "hour"), (60, "minute")):
        if delta >= secs:
            n = int(delta // secs)
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "Less than a minute ago" if delta >= 1 else "Less than a second ago"


def _split_name(name: str) -> tuple[str, str]:
    from sandbox.reference import parse_reference

    ref = parse_reference(name)
    return ref.familiar_name if hasattr(ref, "familiar_name") else ref.name, ref.tag or "<none>"


def cmd_import(argv: list[str]) -> int:
    p = Parser("import", "Import the contents of a tarball or directory to create an image",
               usage="sandbox import [OPTIONS] FILE|DIR [REPOSITORY[:TAG]]")
    p.add_argument("-m", "--message", default="", help="Set commit message for imported image")
    p.add_argument("-c", "--change", action="append", default=[],
                   help="Apply Dockerfile instruction to the created image (CMD, ENV, ...)")
    p.add_argument("source")
    p.add_argument("reference", nargs="?")
    args = parse(p, argv)
    from sandbox.containers import Engine

    engine = Engine()
    changes = _changes(args.change)
    image = engine.images.import_rootfs(args.source, [args.reference] if args.reference else [],
                                        changes=changes, message=args.message)
    sys.stdout.write(image.id + "\n")
    return 0


def _changes(items: list[str]) -> dict[str, Any]:
    """``--change`` for CMD, ENTRYPOINT, ENV, WORKDIR, USER, LABEL, EXPOSE, STOPSIGNAL."""
    import shlex

    out: dict[str, Any] = {}
    for item in items:
        word, _, rest = item.strip().partition(" ")
        word, rest = word.upper(), rest.strip()
        if word in ("CMD", "ENTRYPOINT"):
            value: Any = ["/bin/sh", "-c", rest]
            if rest.startswith("["):
                try:
                    value = json.loads(rest)
                except ValueError:
                    value = None
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise SandboxError(f"invalid --change {item!r}: not a JSON array of strings",
                                       hint=f'write {word} ["cmd", "arg"], or {word} cmd arg')
            out["Cmd" if word == "CMD" else "Entrypoint"] = value
        elif word == "ENV":
            k, eq, v = rest.partition("=")
            if not eq:
                k, _, v = rest.partition(" ")
            env = [e for e in out.get("Env", []) if not e.startswith(k + "=")]
            out["Env"] = [*env, f"{k}={v.strip()}"]
        elif word == "WORKDIR":
            out["WorkingDir"] = rest
        elif word == "USER":
            out["User"] = rest
        elif word == "LABEL":
            for pair in shlex.split(rest):
                k, _, v = pair.partition("=")
                out.setdefault("Labels", {})[k] = v
        elif word == "EXPOSE":
            for port in rest.split():
                out.setdefault("ExposedPorts", {})[port if "/" in port else f"{port}/tcp"] = {}
        elif word == "STOPSIGNAL":
            out["StopSignal"] = rest
        else:
            raise SandboxError(f"{word} is not a valid change command",
                               hint="use CMD, ENTRYPOINT, ENV, WORKDIR, USER, LABEL, EXPOSE "
                                    "or STOPSIGNAL")
    if "Env" in out:
        from sandbox.images import DEFAULT_PATH

        if not any(e.startswith("PATH=") for e in out["Env"]):
            out["Env"].insert(0, f"PATH={DEFAULT_PATH}")
    return out


def _in_use(engine: Any) -> dict[str, str]:
    """image id -> status of a container using it (running wins)."""
    return {image_id: status for image_id, (_, status) in _users(engine).items()}


def _users(engine: Any) -> dict[str, tuple[str, str]]:
    """image id -> (id, status) of a container using it (a running one wins)."""
    used: dict[str, tuple[str, str]] = {}
    for cid in engine.store.iter_containers():
        try:
            image_id = engine.load_config(cid)["spec"]["image_id"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        status = _container_status(engine.store, cid)
        if used.get(image_id, ("", ""))[1] not in ("running", "paused"):
            used[image_id] = (cid, status)
    return used


def _container_status(store: Any, cid: str) -> str:
    import os

    try:
        return str(store.read_json(os.path.join(store.container_dir(cid), "state.json"))
                   .get("status", "created"))
    except (OSError, ValueError, AttributeError):
        return "created"


def _match_reference(pattern: str, repo: str, tag: str) -> bool:
    import fnmatch

    if ":" in pattern.rpartition("/")[2]:
        return fnmatch.fnmatchcase(f"{repo}:{tag}", pattern)
    return fnmatch.fnmatchcase(repo, pattern)


_FILTER_KEYS = ("dangling", "reference", "label", "before", "since")


def _image_filter(filters: list[str], engine: Any) -> Callable[..., bool]:
    """Docker's ``--filter`` for images, as one predicate over (image, repository, tag)."""
    parsed: list[tuple[str, str]] = []
    for item in filters:
        key, eq, value = item.partition("=")
        if not eq:
            raise UsageError(f"bad format of filter (expected name=value): {item}")
        if key not in _FILTER_KEYS:
            raise UsageError(f"invalid filter '{key}'",
                             hint="use dangling, reference, label, before or since")
        if key == "dangling" and value not in ("true", "false", "1", "0"):
            raise UsageError(f"invalid filter 'dangling={value}'",
                             hint="use dangling=true or dangling=false")
        if key in ("before", "since"):
            value = engine.images.get(value).created
        parsed.append((key, value))

    def passes(img: Any, repo: str, tag: str, intermediate: bool = False) -> bool:
        labels = img.run_config.get("Labels") or {}
        for key, value in parsed:
            if key == "dangling" and (img.dangling and not intermediate) != (
                    value in ("true", "1")):
                return False
            if key == "reference" and not _match_reference(value, repo, tag):
                return False
            if key == "label":
                k, has, v = value.partition("=")
                if k not in labels or (has and labels.get(k) != v):
                    return False
            if key == "before" and not img.created < value:
                return False
            if key == "since" and not img.created > value:
                return False
        return True

    return passes


def _repo_of(repo_digest: str) -> str:
    return _split_name(repo_digest.partition("@")[0] + ":x")[0]


def _image_rows(engine: Any, args: Any) -> list[dict[str, str]]:
    keep = _image_filter(args.filter, engine)
    rows = []
    images = sorted(engine.images.list(), key=lambda i: i.created, reverse=True)
    intermediate = engine.images.intermediate(images)
    for image in images:
        if image.id in intermediate and not args.all:
            continue
        pairs = [_split_name(n) for n in image.names] or [("<none>", "<none>")]
        if not image.names and image.repo_digests:
            pairs = [(_repo_of(r), "<none>") for r in image.repo_digests]
        digests = {_repo_of(r): r.partition("@")[2] for r in image.repo_digests}
        size = human_size(engine.images.unpacked_size(image))
        for repo, tag in pairs:
            if args.repository and not _match_reference(args.repository, repo, tag) and \
                    args.repository not in (repo, f"{repo}:{tag}"):
                continue
            if not keep(image, repo, tag, image.id in intermediate):
                continue
            short = image.id if args.no_trunc else image.id[7:19]
            rows.append({"Repository": repo, "Tag": tag, "ID": short,
                         "Digest": digests.get(repo, "<none>"),
                         "CreatedSince": human_ago(image.created), "CreatedAt": image.created,
                         "Size": size, "Containers": "N/A", "SharedSize": "N/A",
                         "UniqueSize": "N/A", "VirtualSize": size})
    return rows


def cmd_images(argv: list[str]) -> int:
    p = Parser("images", "List images", usage="sandbox images [OPTIONS] [REPOSITORY[:TAG]]")
    p.add_argument("-a", "--all", action="store_true",
                   help="Show all images (default hides intermediate images)")
    p.add_argument("-q", "--quiet", action="store_true", help="Only show image IDs")
    p.add_argument("--no-trunc", action="store_true", help="Don't truncate output")
    p.add_argument("--digests", action="store_true", help="Show digests")
    p.add_argument("-f", "--filter", action="append", default=[],
                   help="Filter output (dangling=true, reference=PATTERN, label=, before=, "
                        "since=)")
    p.add_argument("--format", default="", help="json, table, or a Go-style {{.Field}} template")
    p.add_argument("repository", nargs="?")
    args = parse(p, argv)
    from sandbox.containers import Engine

    rows = _image_rows(Engine(), args)
    if args.quiet:
        seen: list[str] = []
        for row in rows:
            if row["ID"] not in seen:
                seen.append(row["ID"])
        sys.stdout.write("".join(i + "\n" for i in seen))
        return 0
    cols = ["Repository", "Tag"] + (["Digest"] if args.digests else []) + \
        ["ID", "CreatedSince", "Size"]
    heads = {"Repository": "REPOSITORY", "Tag": "TAG", "Digest": "DIGEST", "ID": "IMAGE ID",
             "CreatedSince": "CREATED", "Size": "SIZE"}
    sys.stdout.write(render(args.format, rows, [heads[c] for c in cols], cols))
    return 0


def render(fmt: str, rows: list[dict[str, Any]], headers: list[str], cols: list[str]) -> str:
    """Docker's ``--format``: ``json`` (one object a line), ``table [TEMPLATE]``, a template,
    or the default table of ``cols``."""
    if fmt == "json":
        return "".join(json.dumps(row) + "\n" for row in rows)
    if fmt and fmt != "table":
        if fmt.startswith("table "):
            template = fmt[6:]
            head = re.sub(r"\{\{\s*\.(\w+)\s*\}\}", lambda m: _header(m.group(1)), template)
            lines = [fill_template(head, {})] + [fill_template(template, row) for row in rows]
            return _tabs_to_columns(lines)
        return "".join(fill_template(fmt, row) + "\n" for row in rows)
    return table(headers, [[str(r[c]) for c in cols] for r in rows])


def _header(field: str) -> str:
    return {"ID": "IMAGE ID", "CreatedSince": "CREATED", "CreatedAt": "CREATED AT",
            "CreatedBy": "CREATED BY"}.get(field, re.sub(r"(?<!^)(?=[A-Z])", " ", field).upper())


def _tabs_to_columns(lines: list[str]) -> str:
    split = [line.split("\t") for line in lines]
    width = max(len(r) for r in split)
    split = [r + [""] * (width - len(r)) for r in split]
    return table(split[0], split[1:])


def fill_template(fmt: str, obj: Any) -> str:
    """A row's ``--format`` template (``sandbox._template``; a field the row lacks is an
    error, as on Docker's typed rows)."""
    from sandbox._template import render as render_template

    return render_template(fmt, obj, strict=True)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Docker's column layout: left aligned, at least three spaces apart."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=False)]
    lines = ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip()
             for r in [headers, *rows]]
    return "\n".join(lines) + "\n"


def cmd_rmi(argv: list[str]) -> int:
    p = Parser("rmi", "Remove one or more images", usage="sandbox rmi [OPTIONS] IMAGE [IMAGE...]")
    p.add_argument("-f", "--force", action="store_true", help="Force removal of the image")
    p.add_argument("images", nargs="+")
    args = parse(p, argv)
    from sandbox.containers import Engine

    engine = Engine()
    in_use = _users(engine)
    code = 0
    for ref in args.images:
        try:
            for line in engine.images.remove(ref, force=args.force, in_use=in_use):
                sys.stdout.write(line + "\n")
        except ImageNotFound:  # Docker's words: there is nothing to pull here
            sys.stderr.write(f"sandbox: no such image: {ref}\n")
            code = 1
        except SandboxError as err:
            sys.stderr.write(f"sandbox: {err.one_line()}\n")
            code = 1
    return code


def cmd_tag(argv: list[str]) -> int:
    p = Parser("tag", "Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE",
               usage="sandbox tag SOURCE_IMAGE[:TAG] TARGET_IMAGE[:TAG]")
    p.add_argument("source")
    p.add_argument("target")
    args = parse(p, argv)
    from sandbox.containers import Engine

    engine = Engine()
    image = engine.images.get(args.source)
    if image.builtin:
        raise SandboxError("the built-in image host cannot be tagged")
    engine.images.tag(image, args.target)
    return 0


def main(command: str, argv: list[str]) -> int:
    local = {"import": cmd_import, "images": cmd_images, "rmi": cmd_rmi, "tag": cmd_tag}
    if command in local:
        return local[command](argv)
    from sandbox.cli import _image_info

    return _image_info.main(command, argv)
