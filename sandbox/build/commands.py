"""Turn one logical Dockerfile line into an `Instruction` (BuildKit ``parser`` + ``instructions``).

`make_node` splits the keyword and the ``--flags``; `build_instruction` checks the arguments of
each keyword and fills its dataclass. Both raise `DockerfileSyntaxError` carrying the line.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from sandbox.build._errors import DockerfileSyntaxError
from sandbox.build.instructions import (
    AddInstruction,
    ArgDecl,
    ArgInstruction,
    CmdInstruction,
    CopyInstruction,
    EntrypointInstruction,
    EnvInstruction,
    ExposeInstruction,
    FromInstruction,
    HealthcheckInstruction,
    Heredoc,
    Instruction,
    KeyValue,
    LabelInstruction,
    MaintainerInstruction,
    OnbuildInstruction,
    RunInstruction,
    RunMount,
    ShellInstruction,
    StopSignalInstruction,
    UserInstruction,
    VolumeInstruction,
    WorkdirInstruction,
)
from sandbox.build.shell import split_words, unquote

__all__ = ["Node", "make_node", "build_instruction", "heredoc_markers", "can_contain_heredoc",
           "parse_go_duration", "parse_mount", "HEREDOC_WORD"]

HEREDOC_WORD = re.compile(r"^(\d*)<<(-?)([^<]*)$")
_STAGE_NAME = re.compile(r"^[a-z][a-z0-9\-_.]*$")
_HEREDOC_KEYWORDS = ("RUN", "COPY", "ADD")

FlagValue = str | bool | list[str]
_FLAGS: dict[str, dict[str, str]] = {
    "FROM": {"platform": "str"},
    "RUN": {"mount": "list", "network": "str", "security": "str", "device": "list"},
    "COPY": {"from": "str", "chown": "str", "chmod": "str", "link": "bool",
             "parents": "bool", "exclude": "list"},
    "ADD": {"chown": "str", "chmod": "str", "link": "bool", "checksum": "str",
            "keep-git-dir": "bool", "exclude": "list", "unpack": "bool"},
    "HEALTHCHECK": {"interval": "str", "timeout": "str", "start-period": "str",
                    "start-interval": "str", "retries": "str"},
}


@dataclass(frozen=True, kw_only=True)
class Node:
    """A logical line split into keyword, raw flags and the rest."""

    keyword: str
    flags: tuple[str, ...]
    rest: str
    line: int
    end_line: int
    original: str
    escape: str
    heredocs: tuple[Heredoc, ...] = ()


def _extract_flags(text: str) -> tuple[list[str], str]:
    """Leading ``--name[=value]`` words (quotes removed), and the text after them."""
    flags: list[str] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if not text.startswith("--", pos):
            return flags, text[pos:]
        word: list[str] = []
        quote = ""
        while pos < len(text) and (quote or not text[pos].isspace()):
            ch = text[pos]
            if quote and ch == quote:
                quote = ""
            elif not quote and ch in "'\"":
                quote = ch
            elif ch == "\\" and pos + 1 < len(text):
                pos += 1
                word.append(text[pos])
            else:
                word.append(ch)
            pos += 1
        flag = "".join(word)
        if flag == "--":
            return flags, text[pos:].lstrip()
        flags.append(flag)


def make_node(text: str, *, line: int, end_line: int, escape: str,
              heredocs: tuple[Heredoc, ...] = ()) -> Node:
    """Split a logical line (continuations joined) into a `Node`."""
    stripped = text.strip()
    parts = stripped.split(None, 1)
    keyword = parts[0].upper() if parts else ""
    rest = parts[1] if len(parts) == 2 else ""
    flags: list[str] = []
    if keyword != "ONBUILD":
        flags, rest = _extract_flags(rest)
    return Node(keyword=keyword, flags=tuple(flags), rest=rest.strip(), line=line,
                end_line=end_line, original=stripped, escape=escape, heredocs=heredocs)


def can_contain_heredoc(text: str) -> bool:
    """RUN, COPY and ADD take heredocs, also as ONBUILD triggers."""
    words = text.split(None, 2)
    if not words:
        return False
    if words[0].upper() == "ONBUILD":
        return len(words) > 1 and words[1].upper() in _HEREDOC_KEYWORDS
    return words[0].upper() in _HEREDOC_KEYWORDS


def heredoc_markers(text: str) -> list[Heredoc]:
    """The ``<<NAME`` words of a line, in order, with empty content (BuildKit rules)."""
    found: list[Heredoc] = []
    for word in split_words(text):
        match = HEREDOC_WORD.match(word)
        if not match or not match.group(3):
            continue
        rest = match.group(3)
        if len(split_words(rest)) != 1:
            continue
        try:
            name = unquote(rest)
        except DockerfileSyntaxError:
            continue
        quoted = name.count("'") + name.count('"') != rest.count("'") + rest.count('"')
        found.append(Heredoc(name=name, content="", expand=not quoted,
                             chomp=match.group(2) == "-", fd=int(match.group(1) or 0)))
    return found


def _flags(node: Node) -> dict[str, FlagValue]:
    spec = _FLAGS.get(node.keyword, {})
    values: dict[str, FlagValue] = {}
    for raw in node.flags:
        name, has_value, value = raw[2:].partition("=")
        name = name.lower()
        kind = spec.get(name)
        if kind is None:
            raise DockerfileSyntaxError(f"{node.keyword}: unknown flag: --{name}",
                                        line=node.line)
        if kind == "bool":
            if has_value and value.lower() not in ("true", "false"):
                raise DockerfileSyntaxError(
                    f"{node.keyword}: expecting boolean value for flag {name}, not: {value}",
                    line=node.line)
            values[name] = not has_value or value.lower() == "true"
        elif not has_value:
            raise DockerfileSyntaxError(f"{node.keyword}: missing a value on flag: --{name}",
                                        line=node.line)
        elif kind == "list":
            current = values.setdefault(name, [])
            assert isinstance(current, list)
            current.append(value)
        elif name in values:
            raise DockerfileSyntaxError(f"{node.keyword}: duplicate flag specified: --{name}",
                                        line=node.line)
        else:
            values[name] = value
    return values


def _str(flags: dict[str, FlagValue], name: str) -> str | None:
    value = flags.get(name)
    return value if isinstance(value, str) else None


def _list(flags: dict[str, FlagValue], name: str) -> tuple[str, ...]:
    value = flags.get(name)
    return tuple(value) if isinstance(value, list) else ()


def _bool(flags: dict[str, FlagValue], name: str) -> bool | None:
    value = flags.get(name)
    return value if isinstance(value, bool) else None


def _maybe_json(rest: str) -> list[str] | None:
    if not rest.startswith("["):
        return None
    try:
        value = json.loads(rest)
    except ValueError:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return None
    return value


def _base(node: Node) -> dict[str, int | str]:
    return {"line": node.line, "end_line": node.end_line, "original": node.original}


def _fail(node: Node, message: str) -> DockerfileSyntaxError:
    return DockerfileSyntaxError(f"{node.keyword} {message}", line=node.line)


def _from(node: Node) -> Instruction:
    words = split_words(node.rest, escape=node.escape)
    if len(words) not in (1, 3) or (len(words) == 3 and words[1].lower() != "as"):
        raise _fail(node, "requires either one or three arguments (FROM image [AS name])")
    name = words[2].lower() if len(words) == 3 else None
    if name is not None and not _STAGE_NAME.match(name):
        raise _fail(node, f"has an invalid stage name {words[2]!r}: it must start with a "
                    "letter and contain only letters, digits, '-', '_' and '.'")
    return FromInstruction(**_base(node), base=words[0], name=name,  # type: ignore[arg-type]
                           platform=_str(_flags(node), "platform"))


def parse_mount(spec: str, *, line: int = 0) -> RunMount:
    """Parse one ``--mount=`` value (CSV of ``key=value``; bare ``ro``/``readonly`` allowed)."""
    fields = next(csv.reader([spec]), [])
    kind, target, source, from_ = "bind", "", "", ""
    readonly: bool | None = None
    options: list[tuple[str, str]] = []
    for field in fields:
        key, has_value, value = field.partition("=")
        key = key.strip().lower()
        if key == "type":
            kind = value.lower()
        elif key in ("target", "dst", "destination"):
            target = value
        elif key in ("source", "src"):
            source = value
        elif key == "from":
            from_ = value
        elif key in ("ro", "readonly", "rw", "readwrite"):
            flag = not has_value or value.lower() in ("true", "1")
            readonly = flag if key in ("ro", "readonly") else not flag
        elif key:
            options.append((key, value))
    if kind not in ("bind", "cache", "tmpfs", "secret", "ssh"):
        raise DockerfileSyntaxError(f"RUN --mount: unsupported mount type {kind!r}", line=line)
    if kind in ("bind", "cache", "tmpfs") and not target:
        raise DockerfileSyntaxError(f"RUN --mount: type={kind} requires a target", line=line)
    return RunMount(type=kind, target=target, source=source, from_=from_, readonly=readonly,
                    options=tuple(options))


def _command(node: Node, cls: type[RunInstruction] | type[CmdInstruction]
             | type[EntrypointInstruction], **extra: object) -> Instruction:
    args = _maybe_json(node.rest)
    if args is None:
        if not node.rest:
            raise _fail(node, "requires at least one argument")
        return cls(**_base(node), args=(node.rest,), json=False, **extra)  # type: ignore[arg-type]
    return cls(**_base(node), args=tuple(args), json=True, **extra)  # type: ignore[arg-type]


def _run(node: Node) -> Instruction:
    flags = _flags(node)
    mounts = tuple(parse_mount(spec, line=node.line) for spec in _list(flags, "mount"))
    network = _str(flags, "network")
    if network is not None and network not in ("default", "none", "host"):
        raise _fail(node, f"--network={network} is not one of default, none, host")
    return _command(node, RunInstruction, mounts=mounts, network=network,
                    security=_str(flags, "security"), devices=_list(flags, "device"),
                    heredocs=node.heredocs)


def _cmd(node: Node) -> Instruction:
    _flags(node)
    return _command(node, CmdInstruction if node.keyword == "CMD" else EntrypointInstruction)


def _shell(node: Node) -> Instruction:
    _flags(node)
    args = _maybe_json(node.rest)
    if args is None:
        raise _fail(node, 'requires the arguments to be in JSON form, e.g. ["/bin/sh", "-c"]')
    if not args:
        raise _fail(node, "requires at least one argument")
    return ShellInstruction(**_base(node), args=tuple(args))  # type: ignore[arg-type]


def _name_values(node: Node) -> tuple[KeyValue, ...]:
    words = split_words(node.rest, escape=node.escape)
    if not words:
        raise _fail(node, "requires at least one argument")
    if "=" not in words[0]:
        parts = node.rest.split(None, 1)
        if len(parts) < 2:
            raise _fail(node, "must have two arguments (NAME VALUE) or be NAME=VALUE")
        return (KeyValue(key=parts[0], value=parts[1]),)
    pairs: list[KeyValue] = []
    for word in words:
        key, has_eq, value = word.partition("=")
        if not has_eq:
            raise _fail(node, f"syntax error: can't find = in {word!r}; "
                        "must be of the form NAME=VALUE")
        if not key:
            raise _fail(node, "names can not be blank")
        pairs.append(KeyValue(key=key, value=value))
    return tuple(pairs)


def _env(node: Node) -> Instruction:
    _flags(node)
    cls = EnvInstruction if node.keyword == "ENV" else LabelInstruction
    return cls(**_base(node), pairs=_name_values(node))  # type: ignore[arg-type]


def _arg(node: Node) -> Instruction:
    _flags(node)
    words = split_words(node.rest, escape=node.escape)
    if not words:
        raise _fail(node, "requires at least one argument")
    decls: list[ArgDecl] = []
    for word in words:
        name, has_eq, value = word.partition("=")
        if not name:
            raise _fail(node, "names can not be blank")
        decls.append(ArgDecl(name=name, default=value if has_eq else None))
    return ArgInstruction(**_base(node), args=tuple(decls))  # type: ignore[arg-type]


def _copy(node: Node) -> Instruction:
    flags = _flags(node)
    args = _maybe_json(node.rest)
    is_json = args is not None
    if args is None:
        args = split_words(node.rest, escape=node.escape)
    if len(args) < 2:
        raise _fail(node, "requires at least two arguments (sources... destination)")
    heredocs = list(node.heredocs)
    sources: list[str] = []
    used: list[Heredoc] = []
    for src in args[:-1]:
        if heredocs and not is_json and HEREDOC_WORD.match(src):
            used.append(heredocs.pop(0))
        else:
            sources.append(src)
    common = dict(_base(node), sources=tuple(sources), dest=args[-1], heredocs=tuple(used),
                  chown=_str(flags, "chown"), chmod=_str(flags, "chmod"),
                  link=bool(_bool(flags, "link")), excludes=_list(flags, "exclude"),
                  json=is_json)
    if node.keyword == "COPY":
        return CopyInstruction(**common, from_=_str(flags, "from"),  # type: ignore[arg-type]
                               parents=bool(_bool(flags, "parents")))
    return AddInstruction(**common, checksum=_str(flags, "checksum"),  # type: ignore[arg-type]
                          keep_git_dir=bool(_bool(flags, "keep-git-dir")),
                          unpack=_bool(flags, "unpack"))


def _single(node: Node) -> Instruction:
    _flags(node)
    if not node.rest:
        raise _fail(node, "requires exactly one argument")
    base = _base(node)
    value = node.rest
    if node.keyword == "WORKDIR":
        return WorkdirInstruction(**base, path=value)  # type: ignore[arg-type]
    if node.keyword == "USER":
        return UserInstruction(**base, user=value)  # type: ignore[arg-type]
    if node.keyword == "STOPSIGNAL":
        return StopSignalInstruction(**base, signal=value)  # type: ignore[arg-type]
    return MaintainerInstruction(**base, maintainer=value)  # type: ignore[arg-type]


def _list_instruction(node: Node) -> Instruction:
    _flags(node)
    args = _maybe_json(node.rest) if node.keyword == "VOLUME" else None
    words = args if args is not None else split_words(node.rest, escape=node.escape)
    if not words:
        raise _fail(node, "requires at least one argument")
    if node.keyword == "EXPOSE":
        return ExposeInstruction(**_base(node), ports=tuple(words))  # type: ignore[arg-type]
    if any(not word.strip() for word in words):
        raise _fail(node, "specified can not be an empty string")
    return VolumeInstruction(**_base(node), paths=tuple(words),  # type: ignore[arg-type]
                             json=args is not None)


_DURATION_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000,
                   "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> int:
    """Go's ``time.ParseDuration`` in nanoseconds (``1m30s``, ``1.5h``, ``300ms``, ``0``)."""
    body = text[1:] if text[:1] in "+-" else text
    sign = -1 if text.startswith("-") else 1
    if body == "0":
        return 0
    pos, total = 0, 0.0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if not match:
            raise ValueError(f"time: invalid duration {text!r}")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not body:
        raise ValueError(f"time: invalid duration {text!r}")
    return sign * round(total)


def _duration(node: Node, flags: dict[str, FlagValue], name: str) -> int:
    text = _str(flags, name)
    if not text:
        return 0
    try:
        value = parse_go_duration(text)
    except ValueError as exc:
        raise _fail(node, f"--{name}: {exc}") from None
    if value != 0 and value < 1_000_000:
        raise _fail(node, f"--{name} cannot be less than 1ms (got {text})")
    return value


def _healthcheck(node: Node) -> Instruction:
    flags = _flags(node)
    parts = node.rest.split(None, 1)
    kind = parts[0].upper() if parts else ""
    if kind == "NONE":
        if len(parts) > 1 or flags:
            raise _fail(node, "NONE takes no arguments and no options")
        return HealthcheckInstruction(**_base(node), test=("NONE",))  # type: ignore[arg-type]
    if kind != "CMD":
        raise _fail(node, f"has an unknown type {parts[0] if parts else ''!r} (try CMD)")
    command = parts[1].strip() if len(parts) > 1 else ""
    if not command:
        raise _fail(node, "is missing a command after CMD")
    args = _maybe_json(command)
    test = ("CMD", *args) if args is not None else ("CMD-SHELL", command)
    retries_text = _str(flags, "retries") or "0"
    try:
        retries = int(retries_text)
    except ValueError:
        raise _fail(node, f"--retries must be an integer, not {retries_text!r}") from None
    if retries < 0:
        raise _fail(node, f"--retries cannot be negative ({retries})")
    return HealthcheckInstruction(
        **_base(node), test=test, retries=retries,  # type: ignore[arg-type]
        interval=_duration(node, flags, "interval"), timeout=_duration(node, flags, "timeout"),
        start_period=_duration(node, flags, "start-period"),
        start_interval=_duration(node, flags, "start-interval"))


def _onbuild(node: Node) -> Instruction:
    if not node.rest:
        raise _fail(node, "requires at least one argument")
    inner = make_node(node.rest, line=node.line, end_line=node.end_line, escape=node.escape,
                      heredocs=node.heredocs)
    if inner.keyword == "ONBUILD":
        raise _fail(node, "chaining via ONBUILD ONBUILD isn't allowed")
    if inner.keyword in ("FROM", "MAINTAINER"):
        raise _fail(node, f"{inner.keyword} isn't allowed as an ONBUILD trigger")
    trigger = build_instruction(inner)
    return OnbuildInstruction(**_base(node), expression=node.rest,  # type: ignore[arg-type]
                              trigger=trigger)


_BUILDERS: dict[str, Callable[[Node], Instruction]] = {
    "FROM": _from, "RUN": _run, "CMD": _cmd, "ENTRYPOINT": _cmd, "SHELL": _shell,
    "ENV": _env, "LABEL": _env, "ARG": _arg, "COPY": _copy, "ADD": _copy,
    "WORKDIR": _single, "USER": _single, "STOPSIGNAL": _single, "MAINTAINER": _single,
    "EXPOSE": _list_instruction, "VOLUME": _list_instruction,
    "HEALTHCHECK": _healthcheck, "ONBUILD": _onbuild,
}


def build_instruction(node: Node) -> Instruction:
    """The instruction dataclass for a node; unknown keywords are a syntax error."""
    builder = _BUILDERS.get(node.keyword)
    if builder is None:
        raise DockerfileSyntaxError(f"unknown instruction: {node.original.split()[0]}",
                                    line=node.line, hint="see the Dockerfile reference for "
                                    "the list of instructions")
    return builder(node)
