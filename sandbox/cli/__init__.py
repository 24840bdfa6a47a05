"""The ``sandbox`` command: Docker's everyday commands, no daemon, no root.

This package is the only place output is formatted and errors are rendered: one line on stderr,
exit status as Docker's (125 engine error, 126 cannot execute, 127 not found). Each subcommand is
one function in a module of its own, imported only when it runs (start-up time matters: a
``sandbox run --rm`` pays for every import).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from sandbox.errors import SandboxError, UsageError

__all__ = ["main", "COMMANDS"]

# name -> (module, one-line help). Modules define ``add_arguments(parser)`` and ``run(args)``.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("sandbox.cli.run", "Create and run a new container from an image"),
    "create": ("sandbox.cli.run", "Create a new container"),
    "import": ("sandbox.cli.images", "Import the contents of a rootfs tarball to create an image"),
    "images": ("sandbox.cli.images", "List images"),
    "rmi": ("sandbox.cli.images", "Remove one or more images"),
    "tag": ("sandbox.cli.images", "Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE"),
    "info": ("sandbox.cli.info", "Display system-wide information"),
    "version": ("sandbox.cli.info", "Show the sandbox version information"),
}
ALIASES = {"image ls": "images", "image list": "images", "image rm": "rmi",
           "image import": "import", "image tag": "tag", "container run": "run",
           "container create": "create", "system info": "info"}


def _render(err: SandboxError) -> int:
    sys.stderr.write(f"sandbox: {err.one_line()}\n")
    return err.exit_code


def _split_alias(argv: list[str]) -> list[str]:
    if len(argv) >= 2 and f"{argv[0]} {argv[1]}" in ALIASES:
        return [ALIASES[f"{argv[0]} {argv[1]}"], *argv[2:]]
    return argv


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["Usage:  sandbox [--root DIR] [--storage-driver DRIVER] COMMAND", "",
             "A daemonless, rootless container engine for testing", "", "Commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'sandbox COMMAND --help' for more information on a command."]
    return "\n".join(lines) + "\n"


def _global_options(argv: list[str]) -> list[str]:
    """``--root DIR``, ``--storage-driver D`` and ``--debug`` before the command."""
    while argv and argv[0].startswith("-"):
        opt = argv.pop(0)
        name, eq, value = opt.partition("=")
        if name in ("--root", "--storage-driver"):
            if not eq:
                if not argv:
                    raise UsageError(f"flag needs an argument: {name}")
                value = argv.pop(0)
            os.environ["SANDBOX_ROOT" if name == "--root" else "SANDBOX_STORAGE_DRIVER"] = value
        elif name == "--debug":
            os.environ["SANDBOX_DEBUG"] = "1"
        elif name in ("-h", "--help"):
            sys.stdout.write(_usage())
            raise SystemExit(0)
        elif name in ("-v", "--version"):
            argv.insert(0, "version")
            break
        else:
            raise UsageError(f"unknown flag: {name}", hint="see 'sandbox --help'")
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _global_options(args)
        if not args:
            sys.stderr.write(_usage())
            return 0
        args = _split_alias(args)
        command = args[0]
        if command not in COMMANDS:
            raise UsageError(f"'{command}' is not a sandbox command",
                             hint="see 'sandbox --help'")
        import importlib

        module = importlib.import_module(COMMANDS[command][0])
        entry: Callable[[str, list[str]], int] = module.main
        return entry(command, args[1:])
    except SandboxError as err:
        return _render(err)
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        sys.stderr.write(f"sandbox: {exc.strerror or exc}{where}\n")
        return 125
