"""``sandbox run`` and ``sandbox create``."""

from __future__ import annotations

import argparse
import os
import sys

from sandbox.cli._args import Parser, parse
from sandbox.errors import SpecError, UsageError

__all__ = ["main", "options_from_args", "add_container_arguments"]


def add_container_arguments(p: Parser) -> None:
    """The flags ``run`` and ``create`` share."""
    p.add_argument("-i", "--interactive", action="store_true",
                   help="Keep STDIN open even if not attached")
    p.add_argument("-t", "--tty", action="store_true", help="Allocate a pseudo-TTY")
    p.add_argument("--name", default="", help="Assign a name to the container")
    p.add_argument("-e", "--env", action="append", default=[], metavar="NAME[=VALUE]",
                   help="Set environment variables")
    p.add_argument("--env-file", action="append", default=[], metavar="FILE",
                   help="Read in a file of environment variables")
    p.add_argument("-w", "--workdir", default="", help="Working directory inside the container")
    p.add_argument("-u", "--user", default=None, help="Username or UID (format: <name|uid>[:<group|gid>])")
    p.add_argument("-h", "--hostname", default="", help="Container host name")
    p.add_argument("--network", "--net", default="none", help="Network mode: none or host")
    p.add_argument("--read-only", action="store_true",
                   help="Mount the container's root filesystem as read only")
    p.add_argument("-v", "--volume", action="append", default=[], metavar="SRC:DST[:ro]",
                   help="Bind mount a volume")
    p.add_argument("--tmpfs", action="append", default=[], metavar="PATH[:OPTIONS]",
                   help="Mount a tmpfs directory")
    p.add_argument("--entrypoint", default=None, help="Overwrite the default ENTRYPOINT")
    p.add_argument("-l", "--label", action="append", default=[], metavar="KEY=VALUE",
                   help="Set meta data on a container")
    p.add_argument("--storage-driver", default=None, help="overlay, fuse or copy")
    p.add_argument("image", help="the image")
    p.add_argument("command", nargs=argparse.REMAINDER, help="command and arguments")


def _parser(command: str) -> Parser:
    p = Parser(command, "Create and run a new container from an image" if command == "run"
               else "Create a new container",
               usage=f"sandbox {command} [OPTIONS] IMAGE [COMMAND] [ARG...]", short_help=False)
    p.add_argument("--rm", action="store_true",
                   help="Automatically remove the container when it exits")
    p.add_argument("-d", "--detach", action="store_true",
                   help="Run container in background and print container ID")
    p.add_argument("--dry-run", action="store_true",
                   help="Print the setup plan instead of running it")
    add_container_arguments(p)
    return p


def options_from_args(args: argparse.Namespace) -> tuple[object, list[str]]:
    """(RunOptions, command) from parsed flags."""
    import shlex

    from sandbox.containers import RunOptions, parse_volume
    from sandbox.spec import Mount, parse_env_file, parse_env_list

    env: list[str] = []
    for path in args.env_file:
        env += parse_env_file(path)
    env += parse_env_list(args.env)
    mounts = [parse_volume(v) for v in args.volume]
    for item in args.tmpfs:
        target, _, opts = item.partition(":")
        mounts.append(Mount(target=target, type="tmpfs",
                            options=tuple(o for o in opts.split(",") if o)))
    labels = {}
    for item in args.label:
        k, _, v = item.partition("=")
        labels[k] = v
    entrypoint = None
    if args.entrypoint is not None:
        entrypoint = tuple(shlex.split(args.entrypoint)) if args.entrypoint else ()
    if args.user is not None and not args.user:
        raise SpecError("invalid user ''", hint="use -u NAME|UID[:GROUP|GID]")
    opts = RunOptions(
        name=args.name, env=tuple(env), workdir=args.workdir, user=args.user,
        hostname=args.hostname, network=args.network, readonly_rootfs=args.read_only,
        interactive=args.interactive, tty=args.tty, mounts=tuple(mounts),
        remove=getattr(args, "rm", False), entrypoint=entrypoint, labels=labels,
        storage_driver=args.storage_driver)
    return opts, list(args.command)


def main(command: str, argv: list[str]) -> int:
    args = parse(_parser(command), argv)
    from sandbox.containers import Engine, RunOptions

    opts, cmd = options_from_args(args)
    assert isinstance(opts, RunOptions)
    if args.tty and not os.isatty(0) and args.interactive:
        raise UsageError("the input device is not a TTY",
                         hint="drop -t, or run from a terminal")
    engine = Engine()
    if args.detach:
        raise UsageError("detached containers (-d) are not available in this build yet")
    spec = engine.create(args.image, cmd, opts)
    if command == "create":
        sys.stdout.write(spec.id + "\n")
        return 0
    if args.dry_run:
        from sandbox.runtime.plan import build_plan, format_plan

        sys.stdout.write(format_plan(build_plan(spec)) + "\n")
        engine.remove_dir(spec.id)
        return 0
    return engine.run(spec)
