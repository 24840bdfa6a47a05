"""``sandbox build`` and ``sandbox builder prune``."""

from __future__ import annotations

import os
import sys

from sandbox.cli._args import Namespace, Parser, parse
from sandbox.errors import UsageError

TYPE_CHECKING = False  # no ``typing`` import at run time (see _args.py)
if TYPE_CHECKING:
    from sandbox.cli._build_replay import ReplayKey
    from sandbox.store import Store

__all__ = ["main"]


def _parser() -> Parser:
    p = Parser("build", "Build an image from a Dockerfile",
               usage="sandbox build [OPTIONS] PATH | -")
    p.add_argument("-t", "--tag", action="append", default=[], metavar="NAME[:TAG]",
                   help="Name and optionally a tag (repeatable)")
    p.add_argument("-f", "--file", default=None, metavar="FILE",
                   help="Name of the Dockerfile (default: PATH/Dockerfile; - reads stdin)")
    p.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="Set build-time variables")
    p.add_argument("--target", default=None, help="Set the target build stage to build")
    p.add_argument("--no-cache", action="store_true",
                   help="Do not use cache when building the image")
    p.add_argument("--pull", action="store_true",
                   help="Always attempt to pull a newer version of the image")
    p.add_argument("--platform", default=None, help="Set platform (only the host's)")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                   help="Set metadata for an image")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="Suppress the build output and print image ID on success")
    p.add_argument("--network", default="none", help="Networking mode for RUN: none or host")
    p.add_argument("context", metavar="PATH", help="the context directory, or - for a tar "
                   "or a Dockerfile on stdin")
    return p


def _pairs(items: list[str], what: str, *, from_env: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not key:
            raise UsageError(f"invalid {what} {item!r}", hint=f"use --{what} KEY=VALUE")
        if not eq:
            if not from_env:
                value = ""
            elif key in os.environ:
                value = os.environ[key]
            else:
                continue
        out[key] = value
    return out


def _read_dockerfile(path: str) -> str:
    from sandbox.store import read_text

    if not os.path.exists(path):
        raise UsageError(f"cannot locate specified Dockerfile: {path}",
                         hint="check -f, or put a Dockerfile in the context")
    if os.path.isdir(path):
        raise UsageError(f"the Dockerfile {path} is a directory")
    return read_text(path, "Dockerfile")


def _stdin_context(store: Store, data: bytes) -> tuple[str | None, str | None]:
    """``build -``: (context dir or None, Dockerfile text or None to read from the dir)."""
    import io
    import tarfile

    from sandbox.build._context import extract_context_tar

    try:
        tar = tarfile.open(fileobj=io.BytesIO(data))
    except tarfile.TarError:
        return None, data.decode("utf-8")
    ctx = store.mkdtemp(suffix=".context")
    with tar:
        extract_context_tar(tar, ctx)
    return ctx, None


def _check_tags(tags: list[str]) -> None:
    """Refuse a bad ``-t`` before anything is built (Docker checks flags first, too)."""
    from sandbox.errors import SandboxError
    from sandbox.reference import parse_reference

    for tag in tags:
        try:
            ref = parse_reference(tag)
        except SandboxError as exc:
            raise UsageError(f"invalid argument {tag!r} for \"-t, --tag\" flag: "
                             f"{exc.message}") from None
        if ref.digest:
            raise UsageError(f"invalid argument {tag!r} for \"-t, --tag\" flag: "
                             "refusing to create a tag with a digest reference",
                             hint="give NAME[:TAG]")


def _sde() -> int | None:
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    if not value:
        return None
    if not value.isdigit():
        raise UsageError(f"invalid SOURCE_DATE_EPOCH {value!r}", hint="use whole seconds")
    return int(value)


def _source(args: Namespace, store: Store) -> tuple[str | None, str, str, str | None]:
    """(context dir or None, Dockerfile text, its name in the context, temp dir to remove)."""
    if args.context == "-":
        if args.file == "-":
            raise UsageError("cannot read both the context and the Dockerfile from stdin")
        temp, text = _stdin_context(store, sys.stdin.buffer.read())
        if text is None:
            assert temp is not None
            text = _read_dockerfile(os.path.join(temp, args.file or "Dockerfile"))
        return temp, text, args.file or "Dockerfile", temp
    if not os.path.isdir(args.context):
        raise UsageError(f"unable to prepare context: path {args.context!r} not found",
                         hint="give a directory, or - for stdin")
    context = os.path.abspath(args.context)
    if args.file == "-":
        return context, sys.stdin.read(), "Dockerfile", None
    path = args.file or os.path.join(context, "Dockerfile")
    if args.file and not os.path.isabs(args.file) and not os.path.exists(args.file):
        path = os.path.join(context, args.file)
    return context, _read_dockerfile(path), os.path.relpath(os.path.abspath(path), context), None


def cmd_build(argv: list[str]) -> int:
    args = parse(_parser(), argv)
    from sandbox.cli._build_replay import ReplayKey
    from sandbox.store import Store

    if args.network not in ("none", "host", "default"):
        raise UsageError(f"network mode {args.network!r} is not supported for build",
                         hint="use --network none or --network host")
    _check_tags(args.tag)
    store = Store().ensure()
    context, text, name, temp = _source(args, store)
    try:
        key = ReplayKey(text, name, None if temp else context,
                        _pairs(args.build_arg, "build-arg", from_env=True), args.target,
                        args.platform, _pairs(args.label, "label", from_env=False),
                        "none" if args.network == "default" else args.network, _sde())
        if not (args.no_cache or args.pull or temp) and _replay(store, key, args):
            return 0
        _build(store, key, context, args, record=temp is None)
    finally:
        if temp:
            store.rm_rf(temp)
    return 0


def _build(store: Store, key: ReplayKey, context: str | None, args: Namespace, *,
           record: bool) -> None:
    from sandbox.build.builder import BuildOptions, RunStepFailed, build
    from sandbox.cli._build_replay import (
        RACY_NS,
        ReplayRecord,
        outside_inputs,
        save_record,
        sign_context,
    )
    from sandbox.containers import Engine

    signature = ""
    if record:
        import time

        signature, newest = sign_context(key.context, outside_inputs(key))
        record = newest < time.time_ns() - RACY_NS
    options = BuildOptions(
        context=context, dockerfile_text=key.dockerfile_text,
        dockerfile_name=key.dockerfile_name, tags=tuple(args.tag), build_args=key.build_args,
        target=key.target, no_cache=args.no_cache, pull=args.pull, platform=key.platform,
        labels=key.labels, network=key.network, quiet=args.quiet,
        source_date_epoch=key.source_date_epoch)
    try:
        result = build(Engine(store), options, None if args.quiet else _print)
    except RunStepFailed as exc:
        if args.quiet:  # nothing was shown: the step and its output, then the error
            sys.stdout.flush()
            sys.stderr.write(exc.step + "\n")
            sys.stderr.flush()
            out = exc.output
            sys.stderr.buffer.write(out if not out or out.endswith(b"\n") else out + b"\n")
            sys.stderr.buffer.flush()
        raise
    if record and not result.volatile:
        save_record(store, key, ReplayRecord(signature, result.bases, result.manifest_digest,
                                             result.image_id, result.replay_lines,
                                             dict(zip(args.tag, result.names, strict=True))))
    if args.quiet:
        sys.stdout.write(result.image_id + "\n")


def _replay(store: Store, key: ReplayKey, args: Namespace) -> bool:
    """A no-change rebuild from its record (see ``sandbox.cli._build_replay``); False to build."""
    from sandbox.cli._build_replay import check_record, needs_tagging

    found = check_record(store, key)
    if found is None:
        return False
    record, entries = found
    if all(t in record.names for t in args.tag):
        names = [record.names[t] for t in args.tag]
    else:
        from sandbox.reference import parse_reference

        names = [str(parse_reference(t)) for t in args.tag]
    if needs_tagging(entries, record.manifest_digest, names):
        from sandbox.images import ImageStore

        ImageStore(store).add(store.read_blob(record.manifest_digest), names)
    if args.quiet:
        sys.stdout.write(record.image_id + "\n")
        return True
    lines = [*record.lines, f"Successfully built {record.image_id[7:19]}"]
    lines += [f"Successfully tagged {tag}" for tag in args.tag]
    sys.stdout.write("\n".join(lines) + "\n")
    return True


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def cmd_prune(argv: list[str]) -> int:
    p = Parser("builder prune", "Remove build cache", usage="sandbox builder prune [OPTIONS]")
    p.add_argument("-a", "--all", action="store_true", help="Remove all unused build cache")
    p.add_argument("-f", "--force", action="store_true", help="Do not prompt for confirmation")
    parse(p, argv)
    from sandbox.build.builder import prune_cache
    from sandbox.cli._build_replay import remove_records
    from sandbox.containers import Engine

    engine = Engine()
    remove_records(engine.store)
    entries, blobs = prune_cache(engine)
    sys.stdout.write(f"Deleted build cache objects: {entries}\n"
                     f"Deleted blobs: {blobs}\n")
    return 0


def main(command: str, argv: list[str]) -> int:
    if command == "builder prune":
        return cmd_prune(argv)
    return cmd_build(argv)
