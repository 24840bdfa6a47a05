"""File commands: ``diff``, ``cp``, ``commit``, ``export``."""

from __future__ import annotations

import sys
from typing import Any

from sandbox.cli._args import Parser, parse, write_output
from sandbox.errors import UsageError

__all__ = ["main"]


def _engine() -> Any:
    from sandbox.containers import Engine

    return Engine()


def cmd_diff(argv: list[str]) -> int:
    p = Parser("diff", "Inspect changes to files or directories on a container's filesystem",
               usage="sandbox diff CONTAINER")
    p.add_argument("container")
    args = parse(p, argv)
    from sandbox import lifecycle

    for kind, path in lifecycle.diff(_engine(), args.container):
        sys.stdout.write(f"{kind} {path}\n")
    return 0


def _split_ref(arg: str) -> tuple[str | None, str]:
    """``CONTAINER:PATH`` → (container, path); a local path (``/x``, ``./x``, ``-``) → (None, x)."""
    if arg == "-" or arg.startswith(("/", ".")):
        return None, arg
    name, sep, path = arg.partition(":")
    if not sep or not name:
        return None, arg
    return name, path


def cmd_cp(argv: list[str]) -> int:
    p = Parser("cp", "Copy files/folders between a container and the local filesystem",
               usage="sandbox cp [OPTIONS] CONTAINER:SRC_PATH DEST_PATH|-\n"
                     "       sandbox cp [OPTIONS] SRC_PATH|- CONTAINER:DEST_PATH")
    p.add_argument("-L", "--follow-link", action="store_true",
                   help="Always follow symbol link in SRC_PATH")
    p.add_argument("-a", "--archive", action="store_true", help="Archive mode (copy all uid/gid "
                   "information)")
    p.add_argument("-q", "--quiet", action="store_true", help="Suppress progress output")
    p.add_argument("src")
    p.add_argument("dest")
    args = parse(p, argv)
    from sandbox import lifecycle

    src_ctr, src = _split_ref(args.src)
    dest_ctr, dest = _split_ref(args.dest)
    if (src_ctr is None) == (dest_ctr is None):
        raise UsageError("copying between containers is not supported" if src_ctr else
                         "must specify at least one container source",
                         hint="use CONTAINER:PATH on one side")
    engine = _engine()
    if src_ctr is not None:
        lifecycle.copy_from(engine, src_ctr, src or "/", dest, follow_links=args.follow_link)
    else:
        assert dest_ctr is not None
        lifecycle.copy_to(engine, dest_ctr, src, dest or "/")
    return 0


def _changes(items: list[str]) -> dict[str, Any]:
    from sandbox.cli.images import _changes as parse_changes

    out: dict[str, Any] = parse_changes(items)
    return out


def cmd_commit(argv: list[str]) -> int:
    p = Parser("commit", "Create a new image from a container's changes",
               usage="sandbox commit [OPTIONS] CONTAINER [REPOSITORY[:TAG]]")
    p.add_argument("-a", "--author", default="", help="Author")
    p.add_argument("-c", "--change", action="append", default=[],
                   help="Apply Dockerfile instruction to the created image")
    p.add_argument("-m", "--message", default="", help="Commit message")
    p.add_argument("-p", "--pause", default="true", help="Pause container during commit")
    p.add_argument("container")
    p.add_argument("reference", nargs="?")
    args = parse(p, argv)
    from sandbox import lifecycle

    image = lifecycle.commit(_engine(), args.container, args.reference, message=args.message,
                             changes=_changes(args.change), author=args.author,
                             pause_container=args.pause.lower() not in ("false", "0"))
    sys.stdout.write(image.id + "\n")
    return 0


def cmd_export(argv: list[str]) -> int:
    p = Parser("export", "Export a container's filesystem as a tar archive",
               usage="sandbox export [OPTIONS] CONTAINER")
    p.add_argument("-o", "--output", default="", help="Write to a file, instead of STDOUT")
    p.add_argument("container")
    args = parse(p, argv)
    from sandbox import lifecycle

    if not args.output and sys.stdout.isatty():
        raise UsageError("cowardly refusing to save to a terminal",
                         hint="use the -o flag or redirect")
    engine = _engine()
    if args.output:
        write_output(args.output, lambda out: lifecycle.export(engine, args.container, out))
    else:
        lifecycle.export(engine, args.container, sys.stdout.buffer)
    return 0


def main(command: str, argv: list[str]) -> int:
    return {"diff": cmd_diff, "cp": cmd_cp, "commit": cmd_commit,
            "export": cmd_export}[command](argv)
