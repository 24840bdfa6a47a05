"""``volume create``, ``volume ls``, ``volume inspect``, ``volume rm``, ``volume prune``."""

from __future__ import annotations

import json
import sys
from typing import Any

from sandbox.cli._args import Parser, parse
from sandbox.errors import SandboxError, UsageError

__all__ = ["main"]


def _engine() -> Any:
    from sandbox.containers import Engine

    return Engine()


# -- volume -----------------------------------------------------------------------------------

def _volume(argv: list[str]) -> int:
    if not argv:
        raise UsageError("sandbox volume needs a subcommand",
                         hint="create, ls, inspect, rm or prune")
    sub, argv = argv[0], argv[1:]
    from sandbox import volumes
    from sandbox._template import render as format_template

    engine = _engine()
    if sub == "create":
        p = Parser("volume create", "Create a volume", usage="sandbox volume create [NAME]")
        p.add_argument("-l", "--label", action="append", default=[])
        p.add_argument("-d", "--driver", default="local")
        p.add_argument("-o", "--opt", action="append", default=[])
        p.add_argument("name", nargs="?")
        args = parse(p, argv)
        labels = dict(item.partition("=")[::2] for item in args.label)
        name, _ = volumes.create_volume(engine, args.name, labels=labels,
                                        anonymous=not args.name)
        sys.stdout.write(name + "\n")
        return 0
    if sub in ("ls", "list"):
        p = Parser("volume ls", "List volumes", usage="sandbox volume ls [OPTIONS]")
        p.add_argument("-q", "--quiet", action="store_true")
        p.add_argument("--format", default="")
        p.add_argument("-f", "--filter", action="append", default=[])
        args = parse(p, argv)
        vols = volumes.list_volumes(engine)
        if args.quiet:
            sys.stdout.write("".join(v["Name"] + "\n" for v in vols))
        elif args.format:
            sys.stdout.write("".join(format_template(args.format, v, strict=True) + "\n"
                                     for v in vols))
        else:
            from sandbox.cli.images import table

            sys.stdout.write(table(["DRIVER", "VOLUME NAME"],
                                   [["local", v["Name"]] for v in vols]))
        return 0
    if sub == "inspect":
        p = Parser("volume inspect", "Display detailed information on one or more volumes",
                   usage="sandbox volume inspect VOLUME [VOLUME...]")
        p.add_argument("-f", "--format", default="")
        p.add_argument("names", nargs="+")
        args = parse(p, argv)
        data = [volumes.inspect_volume(engine, n) for n in args.names]
        if args.format:
            sys.stdout.write("".join(format_template(args.format, v) + "\n" for v in data))
        else:
            sys.stdout.write(json.dumps(data, indent=4) + "\n")
        return 0
    if sub in ("rm", "remove"):
        p = Parser("volume rm", "Remove one or more volumes",
                   usage="sandbox volume rm [OPTIONS] VOLUME [VOLUME...]")
        p.add_argument("-f", "--force", action="store_true")
        p.add_argument("names", nargs="+")
        args = parse(p, argv)
        code = 0
        for n in args.names:
            try:
                volumes.remove_volume(engine, n, force=args.force)
                sys.stdout.write(n + "\n")
            except SandboxError as err:
                sys.stderr.write(f"sandbox: {err.one_line()}\n")
                code = 1
        return code
    if sub == "prune":
        p = Parser("volume prune", "Remove unused local volumes",
                   usage="sandbox volume prune [OPTIONS]")
        p.add_argument("-f", "--force", action="store_true")
        p.add_argument("-a", "--all", action="store_true", help="Remove named volumes too")
        args = parse(p, argv)
        removed = volumes.prune_volumes(engine, all_=args.all)
        if removed:
            sys.stdout.write("Deleted Volumes:\n" + "".join(n + "\n" for n in removed) + "\n")
        sys.stdout.write("Total reclaimed space: 0B\n")
        return 0
    raise UsageError(f"'volume {sub}' is not a sandbox command",
                     hint="create, ls, inspect, rm or prune")


def main(command: str, argv: list[str]) -> int:
    """``command`` is ``volume SUB`` (or ``volume`` with the subcommand first in ``argv``)."""
    sub = command.partition(" ")[2]
    return _volume([sub, *argv] if sub else argv)
