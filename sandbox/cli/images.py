"""``sandbox import``, ``images``, ``rmi``, ``tag``."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from sandbox.cli._args import Parser, parse
from sandbox.errors import SandboxError

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
        ts = created
    delta = max(0, time.time() - ts)
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
            value = json.loads(rest) if rest.startswith("[") else ["/bin/sh", "-c", rest]
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


def cmd_images(argv: list[str]) -> int:
    p = Parser("images", "List images", usage="sandbox images [OPTIONS] [REPOSITORY[:TAG]]")
    p.add_argument("-a", "--all", action="store_true", help="Show all images")
    p.add_argument("-q", "--quiet", action="store_true", help="Only show image IDs")
    p.add_argument("--no-trunc", action="store_true", help="Don't truncate output")
    p.add_argument("--digests", action="store_true", help="Show digests")
    p.add_argument("--format", default="", help="json, or a {{.Field}} template")
    p.add_argument("repository", nargs="?")
    args = parse(p, argv)
    from sandbox.containers import Engine

    engine = Engine()
    rows = []
    for image in engine.images.list():
        names = image.names or ("<none>:<none>",)
        for name in names:
            repo, tag = _split_name(name) if name != "<none>:<none>" else ("<none>", "<none>")
            if args.repository and args.repository not in (repo, f"{repo}:{tag}", name):
                continue
            short = image.id if args.no_trunc else image.id[7:19]
            rows.append({"Repository": repo, "Tag": tag, "ID": short,
                         "Digest": image.manifest_digest,
                         "CreatedSince": human_ago(image.created), "CreatedAt": image.created,
                         "Size": human_size(image.size)})
    if args.quiet:
        seen: list[str] = []
        for row in rows:
            if row["ID"] not in seen:
                seen.append(row["ID"])
        sys.stdout.write("".join(i + "\n" for i in seen))
        return 0
    if args.format:
        sys.stdout.write("".join(_format(args.format, row) + "\n" for row in rows))
        return 0
    cols = ["Repository", "Tag"] + (["Digest"] if args.digests else []) + \
        ["ID", "CreatedSince", "Size"]
    heads = {"Repository": "REPOSITORY", "Tag": "TAG", "Digest": "DIGEST", "ID": "IMAGE ID",
             "CreatedSince": "CREATED", "Size": "SIZE"}
    sys.stdout.write(table([heads[c] for c in cols], [[r[c] for c in cols] for r in rows]))
    return 0


def _format(fmt: str, row: dict[str, str]) -> str:
    if fmt == "json":
        return json.dumps(row)
    out = fmt
    for key, value in row.items():
        out = out.replace("{{." + key + "}}", value).replace("{{ ." + key + " }}", value)
    return out


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Docker's column layout: left aligned, at least three spaces apart."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    lines = ["   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
             for r in [headers, *rows]]
    return "\n".join(lines) + "\n"


def cmd_rmi(argv: list[str]) -> int:
    p = Parser("rmi", "Remove one or more images", usage="sandbox rmi [OPTIONS] IMAGE [IMAGE...]")
    p.add_argument("-f", "--force", action="store_true", help="Force removal of the image")
    p.add_argument("images", nargs="+")
    args = parse(p, argv)
    from sandbox.containers import Engine

    engine = Engine()
    in_use = set()
    for cid in engine.store.iter_containers():
        try:
            in_use.add(engine.load_config(cid)["spec"]["image_id"])
        except (OSError, ValueError, KeyError):
            continue
    code = 0
    for ref in args.images:
        try:
            for line in engine.images.remove(ref, force=args.force, in_use=in_use):
                sys.stdout.write(line + "\n")
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
    return {"import": cmd_import, "images": cmd_images, "rmi": cmd_rmi,
            "tag": cmd_tag}[command](argv)
