"""The ``sandbox`` command: Docker's everyday commands, no daemon, no root.

This package is the only place output is formatted and errors are rendered: one line on stderr,
exit status as Docker's (125 engine error, 126 cannot execute, 127 not found). Each subcommand is
one function in a module of its own, imported only when it runs (start-up time matters: a
``sandbox run --rm`` pays for every import).
"""

from __future__ import annotations

import os
import sys

from sandbox.errors import SandboxError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import NoReturn

__all__ = ["main", "entry", "resume_gc", "COMMANDS"]

# name -> (module, one-line help). Modules define ``add_arguments(parser)`` and ``run(args)``.
_C = "sandbox.cli.containers"
_I = "sandbox.cli.images"
_R = "sandbox.cli.registry"
_A = "sandbox.cli.archive"
_B = "sandbox.cli.build"
_V = "sandbox.cli.volumes"
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("sandbox.cli.run", "Create and run a new container from an image"),
    "create": ("sandbox.cli.run", "Create a new container"),
    "exec": (_C, "Execute a command in a running container"),
    "ps": (_C, "List containers"),
    "start": (_C, "Start one or more stopped containers"),
    "stop": (_C, "Stop one or more running containers"),
    "restart": (_C, "Restart one or more containers"),
    "kill": (_C, "Kill one or more running containers"),
    "rm": (_C, "Remove one or more containers"),
    "pause": (_C, "Pause all processes within one or more containers"),
    "unpause": (_C, "Unpause all processes within one or more containers"),
    "wait": (_C, "Block until one or more containers stop, then print their exit codes"),
    "top": (_C, "Display the running processes of a container"),
    "rename": (_C, "Rename a container"),
    "stats": (_C, "Display a live stream of container resource usage statistics"),
    "logs": (_C, "Fetch the logs of a container"),
    "attach": (_C, "Attach local standard input, output, and error streams to a container"),
    "diff": (_C, "Inspect changes to files or directories on a container's filesystem"),
    "cp": (_C, "Copy files/folders between a container and the local filesystem"),
    "commit": (_C, "Create a new image from a container's changes"),
    "export": (_C, "Export a container's filesystem as a tar archive"),
    "port": (_C, "List port mappings or a specific mapping for the container"),
    "inspect": (_C, "Return low-level information on containers or images"),
    "container prune": (_C, "Remove all stopped containers"),
    "pull": (_R, "Download an image from a registry"),
    "push": (_R, "Upload an image to a registry"),
    "login": (_R, "Log in to a registry"),
    "logout": (_R, "Log out from a registry"),
    "search": (_R, "Search Docker Hub for images"),
    "import": (_I, "Import the contents of a rootfs tarball to create an image"),
    "images": (_I, "List images"),
    "rmi": (_I, "Remove one or more images"),
    "tag": (_I, "Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE"),
    "history": (_I, "Show the history of an image"),
    "image inspect": (_I, "Display detailed information on one or more images"),
    "image prune": (_I, "Remove unused images"),
    "system df": (_I, "Show disk usage"),
    "system prune": (_I, "Remove unused data"),
    "save": (_A, "Save one or more images to a tar archive"),
    "load": (_A, "Load an image from a tar archive or STDIN"),
    "build": (_B, "Build an image from a Dockerfile"),
    "builder prune": (_B, "Remove build cache"),
    "volume create": (_V, "Create a volume"),
    "volume ls": (_V, "List volumes"),
    "volume inspect": (_V, "Display detailed information on one or more volumes"),
    "volume rm": (_V, "Remove one or more volumes"),
    "volume prune": (_V, "Remove unused local volumes"),
    "info": ("sandbox.cli.info", "Display system-wide information"),
    "version": ("sandbox.cli.info", "Show the sandbox version information"),
}
ALIASES = {"image ls": "images", "image list": "images", "image rm": "rmi",
           "image import": "import", "image tag": "tag", "image pull": "pull",
           "image push": "push", "image history": "history", "image save": "save",
           "image load": "load", "image build": "build", "container run": "run",
           "container create": "create", "container ls": "ps", "container list": "ps",
           "container rm": "rm", "container exec": "exec", "container start": "start",
           "container stop": "stop", "container kill": "kill", "container logs": "logs",
           "container inspect": "inspect", "container cp": "cp", "container diff": "diff",
           "container commit": "commit", "container export": "export", "volume list": "volume ls",
           "system info": "info", "ls": "images"}


def _render(err: SandboxError) -> int:
    sys.stderr.write(f"sandbox: {err.one_line()}\n")
    return err.exit_code


def _split_alias(argv: list[str]) -> list[str]:
    """``image ls`` → ``images``; two-word commands (``volume ls``) become one argument."""
    if len(argv) >= 2:
        pair = f"{argv[0]} {argv[1]}"
        if pair in ALIASES:
            return [ALIASES[pair], *argv[2:]]
        if pair in COMMANDS:
            return [pair, *argv[2:]]
    return argv


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    # (group commands like "volume ls" are listed as they are typed)
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
        name = COMMANDS[command][0]
        try:
            __import__(name)  # not importlib.import_module: importlib imports warnings
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            raise UsageError(f"'sandbox {command}' is not available in this build") from None
        module = sys.modules[name]
        if not getattr(module, "RESUMES_GC", False):
            resume_gc()
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


_GC_PAUSED = False


def resume_gc() -> None:
    """The cyclic garbage collector back on, once the command's imports are done (a command
    module with ``RESUMES_GC`` calls this itself, later: ``run`` once its container has
    started). What exists by then is frozen first (``gc.freeze``): collections would traverse
    it again and again for nothing (about 0.8 ms of every ``sandbox run``), and forked
    helpers would copy its pages by touching them."""
    global _GC_PAUSED
    if _GC_PAUSED:
        import gc

        _GC_PAUSED = False
        gc.freeze()
        gc.enable()


def _pause_gc() -> None:
    """The collector off until ``resume_gc``; a process forked meanwhile (a container's PID 1)
    has it back from the start."""
    global _GC_PAUSED
    import gc

    if gc.isenabled():
        gc.disable()
        _GC_PAUSED = True
        os.register_at_fork(before=_freeze_before_fork, after_in_child=resume_gc)


def _freeze_before_fork() -> None:
    if _GC_PAUSED:
        import gc

        gc.freeze()  # the child's collector starts after what exists now (resume_gc)


def entry() -> NoReturn:
    """The ``sandbox`` program: ``main``, then exit without the interpreter's teardown (a few
    milliseconds of every ``sandbox run``: nothing of ours needs finalizers or atexit). The
    cyclic garbage collector is off until the command's module is loaded (``resume_gc``)."""
    _pause_gc()
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        pass
    os._exit(code)
