"""``sandbox run`` and ``sandbox create``."""

from __future__ import annotations

import os
import sys

from sandbox.cli import resume_gc
from sandbox.cli._args import REMAINDER, Namespace, Parser, parse
from sandbox.errors import SpecError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["main", "options_from_args", "add_container_arguments", "host_options_from_args",
           "parse_mount"]

# ``main`` turns the garbage collector back on (``resume_gc``) itself: a foreground ``run`` only
# once its container has started, since collections on the way cost it about 0.5 ms
RESUMES_GC = True


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
    p.add_argument("-u", "--user", default=None,
                   help="Username or UID (format: <name|uid>[:<group|gid>])")
    p.add_argument("-h", "--hostname", default="", help="Container host name")
    p.add_argument("--network", "--net", default="none",
                   help="Network mode: none, host, slirp4netns[:OPTIONS] or pasta[:OPTIONS]")
    p.add_argument("--read-only", action="store_true",
                   help="Mount the container's root filesystem as read only")
    p.add_argument("-v", "--volume", action="append", default=[], metavar="SRC:DST[:ro]",
                   help="Bind mount a volume")
    p.add_argument("--mount", action="append", default=[], metavar="type=...,target=...",
                   help="Attach a filesystem mount to the container (bind, volume, tmpfs)")
    p.add_argument("--tmpfs", action="append", default=[], metavar="PATH[:OPTIONS]",
                   help="Mount a tmpfs directory")
    p.add_argument("--entrypoint", default=None, help="Overwrite the default ENTRYPOINT")
    p.add_argument("-l", "--label", action="append", default=[], metavar="KEY=VALUE",
                   help="Set meta data on a container")
    p.add_argument("-p", "--publish", action="append", default=[],
                   metavar="[IP:][HOSTPORT:]PORT[/PROTO]",
                   help="Publish a container's port(s) to the host")
    p.add_argument("-P", "--publish-all", action="store_true",
                   help="Publish all exposed ports to random ports")
    p.add_argument("--expose", action="append", default=[], help="Expose a port")
    p.add_argument("--init", action="store_true",
                   help="Run an init inside the container (always: PID 1 is sandbox's init)")
    p.add_argument("--ulimit", action="append", default=[], metavar="NAME=SOFT[:HARD]",
                   help="Ulimit options")
    p.add_argument("-m", "--memory", default="", help="Memory limit")
    p.add_argument("--cpus", default="", help="Number of CPUs")
    p.add_argument("--pids-limit", default="", help="Tune container pids limit")
    p.add_argument("--add-host", action="append", default=[], metavar="HOST:IP",
                   help="Add a custom host-to-IP mapping")
    p.add_argument("--dns", action="append", default=[], help="Set custom DNS servers")
    p.add_argument("--dns-search", action="append", default=[],
                   help="Set custom DNS search domains")
    p.add_argument("--stop-signal", default="", help="Signal to stop the container")
    p.add_argument("--stop-timeout", type=int, default=None,
                   help="Timeout (in seconds) to stop a container")
    p.add_argument("--restart", default="no",
                   help="Restart policy: no, on-failure[:N], always, unless-stopped")
    p.add_argument("--log-opt", action="append", default=[], metavar="max-size=10m",
                   help="Log driver options (max-size, max-file)")
    p.add_argument("--storage-driver", default=None, help="overlay, fuse or copy")
    p.add_argument("image", help="the image")
    p.add_argument("command", nargs=REMAINDER, help="command and arguments")


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


def parse_mount(text: str) -> Any:
    """``--mount type=bind|volume|tmpfs,source=...,target=...[,readonly][,...]``."""
    from sandbox.spec import Mount

    fields: dict[str, str] = {}
    for item in text.split(","):
        k, eq, v = item.partition("=")
        fields[k.strip().lower()] = v if eq else "true"
    kind = fields.get("type", "volume")
    target = fields.get("target") or fields.get("destination") or fields.get("dst") or ""
    source = fields.get("source") or fields.get("src") or ""
    readonly = fields.get("readonly", fields.get("ro", "false")) in ("true", "1")
    if not target:
        raise SpecError(f"invalid --mount {text!r}: target is required")
    if kind == "bind":
        if not source:
            raise SpecError(f"invalid --mount {text!r}: source is required for a bind")
        source = os.path.abspath(source)
        if not os.path.exists(source):
            raise SpecError(f"invalid mount config for type \"bind\": bind source path does "
                            f"not exist: {source}")
        return Mount(target=target, type="bind", source=source, readonly=readonly)
    if kind == "volume":
        nocopy = ("nocopy",) if fields.get("volume-nocopy") in ("true", "1") else ()
        return Mount(target=target, type="volume", source=source, readonly=readonly,
                     options=nocopy)
    if kind == "tmpfs":
        opts: list[str] = []
        if "tmpfs-size" in fields:
            opts.append(f"size={fields['tmpfs-size']}")
        opts.append(f"mode={fields.get('tmpfs-mode', '1777')}")
        return Mount(target=target, type="tmpfs", options=tuple(opts))
    raise SpecError(f"invalid mount type {kind!r}", hint="use bind, volume or tmpfs")


def options_from_args(args: Namespace) -> tuple[object, list[str]]:
    """(RunOptions, command) from parsed flags."""
    from sandbox.containers import RunOptions, parse_volume
    from sandbox.spec import Mount, parse_env_file, parse_env_list

    env: list[str] = []
    for path in args.env_file:
        env += parse_env_file(path)
    env += parse_env_list(args.env)
    mounts = [parse_volume(v) for v in args.volume]
    mounts += [parse_mount(m) for m in getattr(args, "mount", [])]
    for item in args.tmpfs:
        target, _, opts = item.partition(":")
        mounts.append(Mount(target=target, type="tmpfs",
                            options=tuple(o for o in opts.split(",") if o)))
    labels = {}
    for item in args.label:
        k, _, v = item.partition("=")
        if not k:
            raise SpecError(f"invalid label {item!r}", hint="use KEY=VALUE or KEY")
        labels[k] = v
    entrypoint = None
    if args.entrypoint is not None:
        import shlex

        entrypoint = tuple(shlex.split(args.entrypoint)) if args.entrypoint else ()
    if args.user is not None and not args.user:
        raise SpecError("invalid user ''", hint="use -u NAME|UID[:GROUP|GID]")
    network = args.network
    opts = RunOptions(
        name=args.name, env=tuple(env), workdir=args.workdir, user=args.user,
        hostname=args.hostname, network=network, readonly_rootfs=args.read_only,
        interactive=args.interactive, tty=args.tty, mounts=tuple(mounts),
        remove=getattr(args, "rm", False), entrypoint=entrypoint, labels=labels,
        storage_driver=args.storage_driver)
    return opts, list(args.command)


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def _ulimit(text: str) -> dict[str, Any]:
    import resource

    name, eq, value = text.partition("=")
    soft, _, hard = value.partition(":")
    if not eq or getattr(resource, "RLIMIT_" + name.upper(), None) is None:
        raise SpecError(f"invalid ulimit {text!r}", hint="use NAME=SOFT[:HARD], e.g. nofile=1024")

    def num(v: str) -> int:
        if v in ("-1", "unlimited"):
            return resource.RLIM_INFINITY
        if not v.isdigit():
            raise SpecError(f"invalid ulimit value in {text!r}")
        return int(v)

    s = num(soft)
    h = num(hard) if hard else s
    if s > h:
        raise SpecError(f"invalid ulimit {text!r}: the soft limit is above the hard one")
    return {"name": name.lower(), "soft": s, "hard": h}


def host_options_from_args(args: Namespace) -> Any:
    from sandbox.lifecycle import HostOptions, parse_signal

    ports = []
    if args.publish:
        from sandbox._ports import parse_publish

        for item in args.publish:
            ports += parse_publish(item)
    policy, colon, retries = args.restart.partition(":")
    if policy not in ("no", "on-failure", "always", "unless-stopped") or (
            colon and (policy != "on-failure" or not retries.isdigit())):
        raise SpecError(f"invalid restart policy {args.restart!r}",
                        hint="use no, on-failure[:N] (N a number), always or unless-stopped")
    for item in args.add_host:
        host, sep, address = item.partition(":")
        if not sep or not host or not (address == "host-gateway" or _is_ip(address)):
            raise SpecError(f"invalid --add-host {item!r}", hint="use HOST:IP or HOST:host-gateway")
    for item in args.dns:
        if not _is_ip(item):
            raise SpecError(f"invalid --dns {item!r}: not an IP address")
    for item in args.expose:
        port, _, proto = item.partition("/")
        low, _, high = port.partition("-")
        if not low.isdigit() or (high and not high.isdigit()) or proto not in ("", "tcp", "udp"):
            raise SpecError(f"invalid --expose {item!r}", hint="use PORT[-PORT][/tcp|udp]")
    if args.stop_signal:
        parse_signal(args.stop_signal)
    if args.network == "bridge":
        raise SpecError("--network bridge needs a root daemon",
                        hint="use --network slirp4netns or pasta for outbound traffic, none "
                             "(published ports work) or host")
    memory = _size("--memory", args.memory)
    nano = 0
    if args.cpus:
        try:
            nano = int(float(args.cpus) * 1e9)
        except (ValueError, OverflowError):
            nano = -1
        if nano <= 0:
            raise SpecError(f"invalid --cpus value {args.cpus!r}",
                            hint="a number of CPUs above 0, such as 0.5 or 2")
    try:
        pids = int(args.pids_limit) if args.pids_limit else 0
    except ValueError:
        raise SpecError(f"invalid --pids-limit value {args.pids_limit!r}",
                        hint="a number of processes, or -1 for no limit") from None
    if memory or nano or pids:
        from sandbox import _cgroups

        for flag, value, controller in (("--memory", memory, "memory"), ("--cpus", nano, "cpu"),
                                        ("--pids-limit", pids, "pids")):
            why = _cgroups.reason(controller=controller) if value else ""
            if why:
                sys.stderr.write(f"WARNING: {flag} is not enforced: {why}\n")
    if ports and args.network == "host":
        sys.stderr.write("WARNING: Published ports are discarded when using host network "
                         "mode\n")
    log_opts = _log_opts(args.log_opt)
    return HostOptions(
        ports=tuple(ports), publish_all=args.publish_all, restart=args.restart,
        stop_signal=args.stop_signal, stop_timeout=args.stop_timeout, init=args.init,
        ulimits=tuple(_ulimit(u) for u in args.ulimit), add_hosts=tuple(args.add_host),
        dns=tuple(args.dns), dns_search=tuple(args.dns_search), memory=memory,
        nano_cpus=nano, pids_limit=pids, log_opts=log_opts)


def _size(flag: str, text: str) -> int:
    """A size flag's bytes (``512m``, ``2g``, a byte count); 0 when not given."""
    if not text:
        return 0
    from sandbox._logs import parse_size

    try:
        size = parse_size(text)
    except ValueError:
        size = -1
    if size <= 0:
        raise SpecError(f"invalid {flag} value {text!r}", hint="a size such as 512m or 2g")
    return size


def _log_opts(items: list[str]) -> dict[str, str]:
    """``--log-opt``: the json-file driver's ``max-size`` and ``max-file``, checked here so a
    bad value fails before anything is created."""
    opts = dict(o.partition("=")[::2] for o in items)
    for key, value in opts.items():
        if key == "max-size":
            _size("--log-opt max-size", value)
        elif key == "max-file":
            if not value.isdigit() or int(value) < 1:
                raise SpecError(f"invalid --log-opt max-file value {value!r}",
                                hint="a number of files, 1 or more")
        else:
            raise SpecError(f"unknown log opt {key!r} for json-file log driver",
                            hint="sandbox's logs take max-size and max-file")
    return opts


def main(command: str, argv: list[str]) -> int:
    args = parse(_parser(command), argv)
    from sandbox import lifecycle
    from sandbox.containers import Engine, RunOptions

    opts, cmd = options_from_args(args)
    assert isinstance(opts, RunOptions)
    if args.tty and not os.isatty(0) and args.interactive and not args.detach:
        raise UsageError("the input device is not a TTY",
                         hint="drop -t, or run from a terminal")
    if args.rm and args.restart != "no":
        raise UsageError("conflicting options: --restart and --rm")
    host = host_options_from_args(args)
    monitored = not args.detach and (bool(host.ports) or host.publish_all or
                                     host.restart != "no")
    foreground = command == "run" and not (args.dry_run or args.detach or monitored)
    if not foreground:
        resume_gc()
    engine = Engine()
    lifecycle.cleanup_stale(engine)
    if args.dry_run:
        spec = engine.create(args.image, cmd, opts)
        from sandbox.runtime.plan import build_plan, format_plan

        sys.stdout.write(format_plan(build_plan(spec)) + "\n")
        engine.remove_dir(spec.id)
        return 0
    if monitored and opts.remove:
        from sandbox._record import replace as record_replace

        # the CLI removes it after printing its output (the monitor would race the reader)
        spec = lifecycle.create(engine, args.image, cmd, record_replace(opts, remove=False),
                                host)
        try:
            return _run_monitored(engine, spec)
        finally:
            lifecycle.remove(engine, spec.id, force=True, volumes=True)
    if not foreground:
        spec = lifecycle.create(engine, args.image, cmd, opts, host)
        if command == "create":
            sys.stdout.write(spec.id + "\n")
            return 0
        if args.detach:
            lifecycle.start(engine, spec)
            sys.stdout.write(spec.id + "\n")
            return 0
        return _run_monitored(engine, spec)
    from sandbox.runtime import userns

    if opts.network in ("none", "host") and opts.storage_driver != "fuse":
        # the map tools run one after the other while the container is created and started
        # (this process then enters the user namespace they mapped: process.start(inline=True))
        userns.prepare_user_namespace(engine.mapping)
    try:
        spec = lifecycle.create(engine, args.image, cmd, opts, host)
        userns.advance_prepared()
        return lifecycle.run_foreground(engine, spec, on_started=resume_gc)
    finally:
        userns.cancel_prepared()


def _run_monitored(engine: Any, spec: Any) -> int:
    """A foreground run that needs the monitor (ports, restart): start, attach, wait."""
    import signal

    from sandbox import lifecycle
    from sandbox.cli.containers import attach, follow_output

    lifecycle.start(engine, spec)

    def forward(signum: int, _frame: object) -> None:
        try:
            lifecycle.kill(engine, spec.id, str(signum))
        except Exception:  # noqa: BLE001 - the container may be gone already
            pass

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    if not spec.interactive:
        return follow_output(engine, spec.id)
    return attach(engine, spec.id, stdin=True, just_started=True)
