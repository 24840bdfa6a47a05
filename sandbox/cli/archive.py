"""``sandbox save`` and ``sandbox load``."""

from __future__ import annotations

import os
import sys

from sandbox.cli._args import Parser, parse, write_output
from sandbox.errors import SandboxError, UsageError

__all__ = ["main"]


def cmd_save(argv: list[str]) -> int:
    p = Parser("save", "Save one or more images to a tar archive (streamed to STDOUT by default)",
               usage="sandbox save [OPTIONS] IMAGE [IMAGE...]")
    p.add_argument("-o", "--output", default="", help="Write to a file, instead of STDOUT")
    p.add_argument("--format", default="docker-archive",
                   help="docker-archive (default) or oci-archive")
    p.add_argument("images", nargs="+")
    args = parse(p, argv)
    from sandbox.archive import FORMATS, save
    from sandbox.images import ImageStore
    from sandbox.store import Store

    if args.format not in FORMATS:
        raise UsageError(f"unsupported format {args.format!r}",
                         hint="use docker-archive or oci-archive")
    images = ImageStore(Store())
    if not args.output:
        if sys.stdout.isatty():
            raise UsageError("cowardly refusing to save to a terminal",
                             hint="use the -o flag or redirect")
        save(images, args.images, sys.stdout.buffer, fmt=args.format)
        return 0
    write_output(args.output, lambda out: save(images, args.images, out, fmt=args.format))
    return 0


def cmd_load(argv: list[str]) -> int:
    p = Parser("load", "Load an image from a tar archive or STDIN",
               usage="sandbox load [OPTIONS]")
    p.add_argument("-i", "--input", default="",
                   help="Read from a tar archive file (or OCI layout dir), instead of STDIN")
    p.add_argument("-q", "--quiet", action="store_true", help="Suppress the load output")
    args = parse(p, argv)
    from sandbox.archive import load
    from sandbox.images import ImageStore
    from sandbox.reference import parse_reference
    from sandbox.store import Store

    if not args.input and sys.stdin.isatty():
        raise UsageError("requested load from stdin, but stdin is empty",
                         hint="use -i FILE or pipe an archive in")
    if args.input and not os.path.exists(args.input):
        raise SandboxError(f"cannot load {args.input}: no such file or directory")
    images = ImageStore(Store())
    loaded = load(images, args.input or sys.stdin.buffer)
    for image in loaded:
        if image.names:
            for name in image.names:
                sys.stdout.write(f"Loaded image: {parse_reference(name).familiar}\n")
        else:
            sys.stdout.write(f"Loaded image ID: {image.id}\n")
    return 0


def main(command: str, argv: list[str]) -> int:
    return {"save": cmd_save, "load": cmd_load}[command](argv)
