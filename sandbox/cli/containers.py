"""Container lifecycle commands: ``ps``, ``start``, ``stop``, ``restart``, ``kill``, ``rm``,
``pause``, ``unpause``, ``wait``, ``top``, ``rename``, ``stats``, ``logs``, ``attach``, ``exec``,
``port``, ``inspect``, ``container prune``. The file commands (``diff``, ``cp``, ``commit``,
``export``) and ``volume`` live in ``sandbox.cli.files``."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

from sandbox.cli._args import Parser, parse
from sandbox.errors import SandboxError, UsageError

__all__ = ["main", "human_duration", "status_text"]


def _engine() -> Any:
    from sandbox.containers import Engine

    return Engine()


def human_duration(secs: float) -> str:
    """Docker's ``units.HumanDuration``."""
    s = int(secs)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    m = s // 60
    if m == 1:
        return "About a minute"
    if m < 60:
        return f"{m} minutes"
    h = round(s / 3600)
    if h == 1:
        return "About an hour"
    if h < 48:
        return f"{h} hours"
    if h < 24 * 7 * 2:
        return f"{h // 24} days"
    if h < 24 * 30 * 2:
        return f"{h // 24 // 7} weeks"
    if h < 24 * 365 * 2:
        return f"{h // 24 // 30} months"
    return f"{h // 24 // 365} years"


def status_text(s: Any) -> str:
    from sandbox._cstate import parse_time

    now = time.time()
    if s.status in ("running", "paused"):
        text = "Up " + human_duration(now - parse_time(s.started_at))
        return text + (" (Paused)" if s.status == "paused" else "")
    if s.status == "exited":
        return f"Exited ({s.exit_code}) {human_duration(now - parse_time(s.finished_at))} ago"
    return str(s.status).capitalize()


def _each(refs: list[str], fn: Callable[[str], Any], *, echo: bool = True) -> int:
    """Docker's multi-container commands: go on after an error, exit 1 if any failed."""
    code = 0
    for ref in refs:
        try:
            fn(ref)
            if echo:
                sys.stdout.write(ref + "\n")
        except SandboxError as err:
            sys.stderr.write(f"sandbox: {err.one_line()}\n")
            code = 1
    return code


# -- ps -----------------------------------------------------------------------------------------

def _ports_text(ports: dict[str, Any] | None) -> str:
    parts = []
    for key, binds in sorted((ports or {}).items()):
        for ip, hp in binds:
            parts.append(f"{ip}:{hp}->{key}")
    return ", ".join(parts)


def _ps_rows(engine: Any, states: list[Any], no_trunc: bool, size: bool) -> list[dict[str, Any]]:
    from sandbox import _cstate as cs

    rows = []
    for s in states:
        cdir = engine.store.container_dir(s.id)
        try:
            cfg = engine.load_config(s.id)
        except (OSError, ValueError):
            continue
        st = cs.read_state(cdir)
        argv = cfg["spec"].get("argv") or []
        command = " ".join(argv)
        if not no_trunc and len(command) > 20:
            command = command[:19] + "…"
        from sandbox.cli.images import human_size

        created = float(cfg.get("created") or 0)
        row = {"ID": s.id if no_trunc else s.id[:12], "Image": s.image,
               "Command": f'"{command}"', "CreatedAt": time.strftime(
                   "%Y-%m-%d %H:%M:%S %z %Z", time.localtime(created)),
               "RunningFor": human_duration(time.time() - created) + " ago", "Ports": _ports_text(
                   st.get("ports") if s.status in ("running", "paused") else {}),
               "State": s.status, "Status": status_text(s), "Names": s.name,
               "Labels": ",".join(f"{k}={v}" for k, v in (cfg["spec"].get("labels") or {}
                                                          ).items()),
               "Mounts": ",".join(m["target"] for m in cfg["spec"].get("mounts") or []),
               "Networks": cfg["spec"].get("network", "none"), "Size": ""}
        if size:
            from sandbox._control import writable_layer

            layer = writable_layer(cdir, cfg["spec"]["rootfs"])
            row["Size"] = human_size(_dir_size(layer[0]) if layer else 0)
        rows.append(row)
    return rows


def _dir_size(path: str) -> int:
    import os

    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


_PS_FILTERS = ("status", "name", "id", "ancestor", "label", "exited")
_STATUSES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")


def _check_filters(filters: list[str]) -> None:
    """``ps --filter``: each a KEY=VALUE this command knows, before anything is listed."""
    import re

    for f in filters:
        key, eq, value = f.partition("=")
        if not eq or key not in _PS_FILTERS:
            raise UsageError(f"invalid filter '{f}'",
                             hint="filters: " + ", ".join(k + "=..." for k in _PS_FILTERS))
        if key == "status" and value not in _STATUSES:
            raise UsageError(f"invalid filter '{f}': unrecognised status",
                             hint="one of " + ", ".join(_STATUSES))
        if key == "exited" and not value.lstrip("-").isdigit():
            raise UsageError(f"invalid filter '{f}': an exit code is a number")
        if key == "name":
            try:
                re.compile(value)
            except re.error as exc:
                raise UsageError(f"invalid filter '{f}': {exc}") from None


def _match(s: Any, cfg: dict[str, Any], filters: list[str]) -> bool:
    import re

    for f in filters:
        key, _, value = f.partition("=")
        if key == "status" and s.status != value:
            return False
        if key == "name" and not re.search(value, s.name):
            return False
        if key == "id" and not s.id.startswith(value):
            return False
        if key == "ancestor" and value not in (s.image, cfg["spec"].get("image_id", ""),
                                               cfg["spec"].get("image_id", "")[7:19]):
            return False
        if key == "label":
            k, eq, v = value.partition("=")
            labels = cfg["spec"].get("labels") or {}
            if k not in labels or (eq and labels[k] != v):
                return False
        if key == "exited" and (s.status != "exited" or str(s.exit_code) != value):
            return False
    return True


def cmd_ps(argv: list[str]) -> int:
    p = Parser("ps", "List containers", usage="sandbox ps [OPTIONS]")
    p.add_argument("-a", "--all", action="store_true", help="Show all containers")
    p.add_argument("-q", "--quiet", action="store_true", help="Only display container IDs")
    p.add_argument("-l", "--latest", action="store_true", help="Show the latest created")
    p.add_argument("-n", "--last", type=int, default=-1, help="Show n last created")
    p.add_argument("-f", "--filter", action="append", default=[], help="Filter output")
    p.add_argument("--format", default="", help="Format output using a template")
    p.add_argument("--no-trunc", action="store_true", help="Don't truncate output")
    p.add_argument("-s", "--size", action="store_true", help="Display total file sizes")
    args = parse(p, argv)
    _check_filters(args.filter)
    from sandbox import lifecycle

    engine = _engine()
    lifecycle.cleanup_stale(engine)
    show_all = args.all or args.latest or args.last >= 0 or any(
        f.startswith(("status=", "exited=")) for f in args.filter)
    states = lifecycle.list_containers(engine, all=show_all)
    if args.filter:
        states = [s for s in states if _match(s, engine.load_config(s.id), args.filter)]
    if args.latest:
        states = states[:1]
    elif args.last >= 0:
        states = states[:args.last]
    if args.quiet:
        sys.stdout.write("".join((s.id if args.no_trunc else s.id[:12]) + "\n" for s in states))
        return 0
    rows = _ps_rows(engine, states, args.no_trunc, args.size)
    cols = ["ID", "Image", "Command", "RunningFor", "Status", "Ports", "Names"] + (
        ["Size"] if args.size else [])
    heads = {"ID": "CONTAINER ID", "Image": "IMAGE", "Command": "COMMAND",
             "RunningFor": "CREATED", "Status": "STATUS", "Ports": "PORTS", "Names": "NAMES",
             "Size": "SIZE"}
    _print_rows(rows, cols, heads, args.format)
    return 0


def _print_rows(rows: list[dict[str, Any]], cols: list[str], heads: dict[str, str],
                fmt: str) -> None:
    from sandbox._template import render as format_template
    from sandbox.cli.images import table

    if fmt and fmt != "table":
        if fmt.startswith("table"):
            import re

            body = fmt[5:].strip()
            fields = re.findall(r"\{\{\s*\.(\w+)\s*\}\}", body)
            hdr = [heads.get(f, f.upper()) for f in fields]
            lines = [[format_template("{{." + f + "}}", r, strict=True) for f in fields]
                     for r in rows]
            sys.stdout.write(table(hdr, lines))
            return
        sys.stdout.write("".join(format_template(fmt, r, strict=True) + "\n" for r in rows))
        return
    sys.stdout.write(table([heads[c] for c in cols], [[str(r[c]) for c in cols] for r in rows]))


# -- start / stop / kill / rm / pause -------------------------------------------------------------

def cmd_start(argv: list[str]) -> int:
    p = Parser("start", "Start one or more stopped containers",
               usage="sandbox start [OPTIONS] CONTAINER [CONTAINER...]")
    p.add_argument("-a", "--attach", action="store_true", help="Attach STDOUT/STDERR")
    p.add_argument("-i", "--interactive", action="store_true", help="Attach STDIN")
    p.add_argument("containers", nargs="+")
    args = parse(p, argv)
    from sandbox import lifecycle
    from sandbox.spec import spec_from_json

    engine = _engine()
    lifecycle.cleanup_stale(engine)

    def start(ref: str) -> None:
        cid = engine.resolve_container(ref)
        st = lifecycle.state(engine, cid)
        if st.status in ("running", "paused"):
            return
        spec = spec_from_json(json.dumps(engine.load_config(cid)["spec"]))
        lifecycle.start(engine, spec)

    if not (args.attach or args.interactive):
        return _each(args.containers, start)
    if len(args.containers) > 1:
        raise UsageError("you cannot start and attach multiple containers at once")
    ref = args.containers[0]
    start(ref)
    if args.interactive:
        return attach(engine, ref, stdin=True, just_started=True)
    return follow_output(engine, engine.resolve_container(ref))


def follow_output(engine: Any, cid: str) -> int:
    """Print this run's output as it comes (from the log: nothing is missed), then its status."""
    from sandbox import lifecycle
    from sandbox._cstate import parse_time

    since = parse_time(lifecycle.state(engine, cid).started_at) - 0.001
    for stream, line in lifecycle.logs(engine, cid, follow=True, since=since):
        out = sys.stdout if stream == "stdout" else sys.stderr
        out.buffer.write(line)
        out.flush()
    return lifecycle.wait(engine, cid)


def attach(engine: Any, ref: str, *, stdin: bool, just_started: bool = False) -> int:
    """Relay a container's streams until it ends; its exit status, or 0 on detach.

    ``just_started`` (``start -a -i``, a monitored ``run``): the output the command printed
    before we connected is replayed, and a run already over is read from the log.
    """
    from sandbox import lifecycle
    from sandbox._attach import DETACHED, GONE, attach_client

    cid = engine.resolve_container(ref)
    spec = engine.load_config(cid)["spec"]
    if not just_started and lifecycle.state(engine, cid).status not in ("running", "paused"):
        raise SandboxError("you cannot attach to a stopped container, start it first")
    try:
        code = attach_client(spec["container_dir"], stdin=stdin and spec.get("interactive"),
                             tty=bool(spec.get("tty")), replay=just_started)
    except OSError as exc:
        raise SandboxError(f"cannot attach to {ref}: {exc.strerror}") from None
    if code == DETACHED:
        if not just_started:
            sys.stderr.write("\nread escape sequence\n")
        return 0
    if code == GONE:
        return follow_output(engine, cid)
    return lifecycle.wait(engine, cid)


def cmd_attach(argv: list[str]) -> int:
    p = Parser("attach", "Attach local standard input, output, and error streams to a running "
               "container", usage="sandbox attach [OPTIONS] CONTAINER")
    p.add_argument("--no-stdin", action="store_true", help="Do not attach STDIN")
    p.add_argument("--sig-proxy", default="true", help="Proxy all received signals")
    p.add_argument("--detach-keys", default="ctrl-p,ctrl-q", help="Detach key sequence")
    p.add_argument("container")
    args = parse(p, argv)
    return attach(_engine(), args.container, stdin=not args.no_stdin)


def cmd_stop(argv: list[str]) -> int:
    p = Parser("stop", "Stop one or more running containers",
               usage="sandbox stop [OPTIONS] CONTAINER [CONTAINER...]")
    p.add_argument("-t", "--time", "--timeout", type=int, default=None, dest="time",
                   help="Seconds to wait before killing it")
    p.add_argument("-s", "--signal", default=None, help="Signal to send to the container")
    p.add_argument("containers", nargs="+")
    args = parse(p, argv)
    from sandbox import lifecycle

    engine = _engine()
    return _each(args.containers, lambda r: lifecycle.stop(engine, r, timeout=args.time,
                                                           signal=args.signal))


def cmd_restart(argv: list[str]) -> int:
    p = Parser("restart", "Restart one or more containers",
               usage="sandbox restart [OPTIONS] CONTAINER [CONTAINER...]")
    p.add_argument("-t", "--time", type=int, default=None, help="Seconds to wait before killing")
    p.add_argument("containers", nargs="+")
    args = parse(p, argv)
    from sandbox import lifecycle

    engine = _engine()
    return _each(args.containers, lambda r: lifecycle.restart(engine, r, timeout=args.time))


def cmd_kill(argv: list[str]) -> int:
    p = Parser("kill", "Kill one or more running containers",
               usage="sandbox kill [OPTIONS] CONTAINER [CONTAINER...]")
    p.add_argument("-s", "--signal", default="KILL", help="Signal to send to the container")
    p.add_argument("containers", nargs="+")
    args = parse(p, argv)
    from sandbox import lifecycle

    engine = _engine()
    lifecycle.parse_signal(args.signal)
    return _each(args.containers, lambda r: lifecycle.kill(engine, r, args.signal))


def cmd_rm(argv: list[str]) -> int:
    p = Parser("rm", "Remove one or more containers",
               usage="sandbox rm [OPTIONS] CONTAINER [CONTAINER...]")
    p.add_argument("-f", "--force", action="store_true", help="Force the removal of a running "
                   "container (uses SIGKILL)")
    p.add_argument("-v", "--volumes", action="store_true",
                   help="Remove anonymous volumes associated with the container")
    p.add_argument("containers", nargs="+")
    args = parse(p, argv)
    from sandbox import lifecycle

    engine = _engine()
    lifecycle.cleanup_stale(engine)
    return _each(args.containers, lambda r: lifecycle.remove(engine, r, force=args.force,
                                                             volumes=args.volumes))


def cmd_pause(argv: list[str], unpause: bool = False) -> int:
    name = "unpause" if unpause else "pause"
    p = Parser(name, f"{name.capitalize()} all processes within one or more containers",
               usage=f"sandbox {name} CONTAINER [CONTAINER...]")
    p.add_argument("containers", nargs="+")
    args = parse(p, argv)
    from sandbox import lifecycle

    engine = _engine()
    fn = lifecycle.unpause if unpause else lifecycle.pause
    return _each(args.containers, lambda r: fn(engine, r))


def cmd_wait(argv: list[str]) -> int:
    p = Parser("wait", "Block until one or more containers stop, then print their exit codes",
               usage="sandbox wait CONTAINER [CONTAINER...]")
    p.add_argument("containers", nargs="+")
    args = parse(p, argv)
    from sandbox import lifecycle

    engine = _engine()
    return _each(args.containers,
                 lambda r: sys.stdout.write(f"{lifecycle.wait(engine, r)}\n"), echo=False)


def cmd_rename(argv: list[str]) -> int:
    p = Parser("rename", "Rename a container", usage="sandbox rename CONTAINER NEW_NAME")
    p.add_argument("container")
    p.add_argument("new_name")
    args = parse(p, argv)
    from sandbox import lifecycle

    lifecycle.rename(_engine(), args.container, args.new_name)
    return 0


def cmd_prune(argv: list[str]) -> int:
    p = Parser("container prune", "Remove all stopped containers",
               usage="sandbox container prune [OPTIONS]")
    p.add_argument("-f", "--force", action="store_true", help="Do not prompt for confirmation")
    args = parse(p, argv)
    if not args.force and sys.stdin.isatty():
        sys.stdout.write("WARNING! This will remove all stopped containers.\n"
                         "Are you sure you want to continue? [y/N] ")
        sys.stdout.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            return 0
    from sandbox import lifecycle

    removed = lifecycle.prune(_engine())
    if removed:
        sys.stdout.write("Deleted Containers:\n" + "".join(c + "\n" for c in removed) + "\n")
    sys.stdout.write("Total reclaimed space: 0B\n")
    return 0


# -- top / stats / logs / port / inspect --------------------------------------------------------

def cmd_top(argv: list[str]) -> int:
    p = Parser("top", "Display the running processes of a container",
               usage="sandbox top CONTAINER [ps OPTIONS]")
    p.add_argument("container")
    p.add_argument("ps_args", nargs="*")
    args = parse(p, argv)
    from sandbox import lifecycle
    from sandbox.cli.images import table

    heads, rows = lifecycle.top(_engine(), args.container)
    sys.stdout.write(table(heads, rows))
    return 0


def cmd_stats(argv: list[str]) -> int:
    p = Parser("stats", "Display a live stream of container(s) resource usage statistics",
               usage="sandbox stats [OPTIONS] [CONTAINER...]")
    p.add_argument("-a", "--all", action="store_true", help="Show all containers")
    p.add_argument("--no-stream", action="store_true", help="Print one result and exit")
    p.add_argument("--no-trunc", action="store_true", help="Do not truncate output")
    p.add_argument("--format", default="", help="Format output using a template")
    p.add_argument("containers", nargs="*")
    args = parse(p, argv)
    from sandbox import lifecycle
    from sandbox.cli.images import human_size

    engine = _engine()
    heads = {"ID": "CONTAINER ID", "Name": "NAME", "CPUPerc": "CPU %",
             "MemUsage": "MEM USAGE / LIMIT", "MemPerc": "MEM %", "NetIO": "NET I/O",
             "BlockIO": "BLOCK I/O", "PIDs": "PIDS"}
    while True:
        rows = []
        for s in lifecycle.stats(engine, args.containers):
            rows.append({"ID": s["ID"] if args.no_trunc else s["ID"][:12], "Name": s["Name"],
                         "Container": s["Name"], "CPUPerc": f"{s['CPUPerc']:.2f}%",
                         "MemUsage": f"{_bin(s['MemUsage'])} / {_bin(s['MemLimit'])}",
                         "MemPerc": f"{s['MemPerc']:.2f}%",
                         "NetIO": f"{human_size(s['NetRx'])} / {human_size(s['NetTx'])}",
                         "BlockIO": f"{human_size(s['BlockRead'])} / "
                                    f"{human_size(s['BlockWrite'])}",
                         "PIDs": str(s["PIDs"])})
        if not args.no_stream:
            sys.stdout.write("\x1b[2J\x1b[H")
        _print_rows(rows, list(heads), heads, args.format)
        sys.stdout.flush()
        if args.no_stream:
            return 0
        time.sleep(0.5)


def _bin(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.4g}{unit}"
        n /= 1024
    return f"{n}B"


def cmd_logs(argv: list[str]) -> int:
    p = Parser("logs", "Fetch the logs of a container", usage="sandbox logs [OPTIONS] CONTAINER")
    p.add_argument("-f", "--follow", action="store_true", help="Follow log output")
    p.add_argument("-n", "--tail", default="all", help="Number of lines to show from the end")
    p.add_argument("--since", default=None, help="Show logs since timestamp or relative")
    p.add_argument("--until", default=None, help="Show logs before a timestamp or relative")
    p.add_argument("-t", "--timestamps", action="store_true", help="Show timestamps")
    p.add_argument("--details", action="store_true", help="Show extra details")
    p.add_argument("container")
    args = parse(p, argv)
    from sandbox import lifecycle

    try:
        tail = None if args.tail == "all" else int(args.tail)
    except ValueError:
        raise UsageError(f"invalid value for --tail: {args.tail!r}",
                         hint="a number of lines, or all") from None
    if tail is not None and tail < 0:
        tail = None  # as Docker: a negative count is all of it
    out, err = sys.stdout.buffer, sys.stderr.buffer
    for stream, line in lifecycle.logs(_engine(), args.container, tail=tail, since=args.since,
                                       until=args.until, follow=args.follow,
                                       timestamps=args.timestamps):
        target = out if stream == "stdout" else err
        target.write(line)
        if args.follow:
            target.flush()
    return 0


def cmd_port(argv: list[str]) -> int:
    p = Parser("port", "List port mappings or a specific mapping for the container",
               usage="sandbox port CONTAINER [PRIVATE_PORT[/PROTO]]")
    p.add_argument("container")
    p.add_argument("private", nargs="?")
    args = parse(p, argv)
    from sandbox import lifecycle

    engine = _engine()
    st = lifecycle.inspect(engine, args.container)
    ports = st["NetworkSettings"]["Ports"]
    if args.private:
        num, _, proto = args.private.partition("/")
        binds = lifecycle.port(engine, args.container, int(num), proto or "tcp")
        if not binds:
            raise SandboxError(f"no public port '{args.private}' published for "
                               f"{args.container}")
        sys.stdout.write("".join(f"{ip}:{hp}\n" for ip, hp in binds))
        return 0
    for key, binds in sorted(ports.items()):
        for b in binds or []:
            sys.stdout.write(f"{key} -> {b['HostIp']}:{b['HostPort']}\n")
    return 0


def cmd_inspect(argv: list[str]) -> int:
    p = Parser("inspect", "Return low-level information on containers or images",
               usage="sandbox inspect [OPTIONS] NAME|ID [NAME|ID...]")
    p.add_argument("-f", "--format", default="", help="Format output using a template")
    p.add_argument("-s", "--size", action="store_true", help="Display total file sizes")
    p.add_argument("--type", default="", help="container, image or volume")
    p.add_argument("names", nargs="+")
    args = parse(p, argv)
    from sandbox import lifecycle, volumes
    from sandbox._template import render as format_template
    from sandbox.errors import ContainerNotFound, ImageNotFound

    if args.type not in ("", "container", "image", "volume"):
        raise UsageError(f"\"--type\" invalid: '{args.type}' is not a valid value for --type",
                         hint="use container, image or volume")
    engine = _engine()
    results: list[Any] = []
    code = 0
    for ref in args.names:
        try:
            if args.type in ("", "container"):
                try:
                    results.append(lifecycle.inspect(engine, ref))
                    continue
                except ContainerNotFound:
                    if args.type:
                        raise
            if args.type in ("", "image"):
                try:
                    from sandbox.cli._image_info import inspect_image

                    # the very document of `image inspect`, as Docker's plain inspect gives
                    results.append(inspect_image(engine, engine.images.get(ref)))
                    continue
                except ImageNotFound:
                    if args.type:
                        raise
            results.append(volumes.inspect_volume(engine, ref))
        except SandboxError:
            what = {"": "object"}.get(args.type, args.type)
            sys.stderr.write(f"sandbox: no such {what}: {ref}\n")
            code = 1
    if args.format:
        sys.stdout.write("".join(format_template(args.format, r) + "\n" for r in results))
    else:
        sys.stdout.write(json.dumps(results, indent=4) + "\n")
    return code


# -- exec -------------------------------------------------------------------------------------

def cmd_exec(argv: list[str]) -> int:
    from sandbox.cli._args import REMAINDER

    p = Parser("exec", "Execute a command in a running container",
               usage="sandbox exec [OPTIONS] CONTAINER COMMAND [ARG...]")
    p.add_argument("-i", "--interactive", action="store_true", help="Keep STDIN open")
    p.add_argument("-t", "--tty", action="store_true", help="Allocate a pseudo-TTY")
    p.add_argument("-d", "--detach", action="store_true", help="Detached mode")
    p.add_argument("-e", "--env", action="append", default=[], help="Set environment variables")
    p.add_argument("--env-file", action="append", default=[], help="Read in a file of env vars")
    p.add_argument("-w", "--workdir", default=None, help="Working directory")
    p.add_argument("-u", "--user", default=None, help="Username or UID")
    p.add_argument("--privileged", action="store_true", help="(ignored)")
    p.add_argument("container")
    p.add_argument("command", nargs=REMAINDER)
    args = parse(p, argv)
    if not args.command:
        raise UsageError("exec requires at least 2 arguments",
                         hint="sandbox exec [OPTIONS] CONTAINER COMMAND [ARG...]")
    from sandbox import lifecycle
    from sandbox.spec import check_workdir, parse_env_file, parse_env_list

    env: list[str] = []
    for path in args.env_file:
        env += parse_env_file(path)
    env += parse_env_list(args.env)
    import os

    if args.tty and not os.isatty(0) and args.interactive:
        raise UsageError("the input device is not a TTY", hint="drop -t")
    if args.workdir is not None:
        check_workdir(args.workdir)
    return lifecycle.exec_stream(_engine(), args.container, args.command, env=env,
                                 workdir=args.workdir, user=args.user,
                                 interactive=args.interactive, tty=args.tty,
                                 detach=args.detach)


_COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "ps": cmd_ps, "start": cmd_start, "attach": cmd_attach, "stop": cmd_stop,
    "restart": cmd_restart, "kill": cmd_kill, "rm": cmd_rm, "pause": cmd_pause,
    "unpause": lambda a: cmd_pause(a, unpause=True), "wait": cmd_wait, "rename": cmd_rename,
    "top": cmd_top, "stats": cmd_stats, "logs": cmd_logs, "port": cmd_port,
    "inspect": cmd_inspect, "exec": cmd_exec,
}


def main(command: str, argv: list[str]) -> int:
    if command in ("diff", "cp", "commit", "export"):
        from sandbox.cli import files

        return files.main(command, argv)
    if command == "container prune":
        return cmd_prune(argv)
    if command == "container":
        if not argv:
            raise UsageError("sandbox container needs a subcommand",
                             hint="ls, prune, inspect, start, stop, rm, ...")
        return main({"ls": "ps", "list": "ps", "prune": "container prune",
                     "remove": "rm"}.get(argv[0], argv[0]), argv[1:])
    if command not in _COMMANDS:
        raise UsageError(f"'{command}' is not a sandbox command")
    return _COMMANDS[command](argv)
