"""Per-stage ENV/ARG/SHELL/WORKDIR state that the builder threads through the steps.

Docker expands an instruction's words with the environment in force *before* it: the base
image's Env, then every ENV and ARG of the stage so far (ENV wins over an ARG of the same
name). `BuildState.step` does exactly that for one instruction and then records its effect,
so the builder calls it once per instruction in order::

    state = BuildState.for_stage(dockerfile, stage, env=base_config_env)
    for raw in stage.instructions:
        step = state.step(raw)          # expanded copy; state now includes its ENV/ARG/...
        ...execute `step` (RUN with run_command(step, state.shell), env=state.run_env())
"""

from __future__ import annotations

import posixpath
import re
import signal as _signal
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from sandbox.build.commands import HEREDOC_WORD
from sandbox.build.instructions import (
    ArgInstruction,
    CmdInstruction,
    EntrypointInstruction,
    EnvInstruction,
    Heredoc,
    Instruction,
    RunInstruction,
    ShellInstruction,
    UserInstruction,
    WorkdirInstruction,
    expand_instruction,
)
from sandbox.build.parser import Dockerfile, Stage
from sandbox.build.shell import expand_heredoc, expand_word, split_words
from sandbox.errors import BuildError

__all__ = ["BuildState", "RunCommand", "run_command", "command_argv", "port_specs",
           "parse_signal", "PROXY_ARGS", "DEFAULT_SHELL"]

PROXY_ARGS = frozenset({
    "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
    "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy",
})
"""Build args usable in RUN without an ARG declaration (and kept out of history)."""
DEFAULT_SHELL: tuple[str, ...] = ("/bin/sh", "-c")

_I = TypeVar("_I", bound=Instruction)


def _env_dict(env: Mapping[str, str] | Iterable[str]) -> dict[str, str]:
    if isinstance(env, Mapping):
        return dict(env)
    out: dict[str, str] = {}
    for item in env:
        key, _, value = item.partition("=")
        out[key] = value
    return out


@dataclass
class BuildState:
    """Mutable state of one stage while it is built (the only mutable type here)."""

    escape: str = "\\"
    env: dict[str, str] = field(default_factory=dict)
    """The image config's Env so far, in order (base image Env first)."""
    args: dict[str, str | None] = field(default_factory=dict)
    """ARGs declared in this stage so far; None when declared without any value."""
    build_args: Mapping[str, str] = field(default_factory=dict)
    meta_args: Mapping[str, str] = field(default_factory=dict)
    """Global ARG values, inherited by an in-stage ``ARG NAME`` without a default."""
    shell: tuple[str, ...] = DEFAULT_SHELL
    workdir: str = ""
    user: str = ""

    @classmethod
    def for_stage(cls, dockerfile: Dockerfile, stage: Stage | None = None, *,
                  env: Mapping[str, str] | Iterable[str] = (),
                  shell: Sequence[str] | None = None, workdir: str = "",
                  user: str = "") -> BuildState:
        """The state at the start of a stage, from its base image's config.

        ``stage`` is accepted for symmetry and future per-stage data; the state depends on
        the Dockerfile (escape, build args, global ARGs) and on the base config only.
        """
        del stage
        return cls(escape=dockerfile.escape, env=_env_dict(env),
                   build_args=dict(dockerfile.build_args), meta_args=dict(dockerfile.meta_args),
                   shell=tuple(shell) if shell else DEFAULT_SHELL, workdir=workdir, user=user)

    def expansion_env(self) -> dict[str, str]:
        """Variables visible to ``$VAR`` in the next instruction (ARGs, then ENV over them)."""
        visible = {key: value for key, value in self.args.items() if value is not None}
        visible.update(self.env)
        return visible

    def expand(self, word: str) -> str:
        """Expand one word with the current state (quotes and escapes removed)."""
        return expand_word(word, self.expansion_env(), escape=self.escape)

    def expand_heredoc(self, text: str) -> str:
        """Expand ``$VAR`` in a heredoc body (for COPY/ADD heredocs whose ``expand`` is True)."""
        return expand_heredoc(text, self.expansion_env(), escape=self.escape)

    def heredoc_content(self, doc: Heredoc) -> str:
        """The file content of a COPY/ADD heredoc: tabs chomped, ``$VAR`` expanded unless the
        delimiter was quoted."""
        return self.expand_heredoc(doc.text) if doc.expand else doc.text

    def step(self, instruction: _I) -> _I:
        """Expand ``instruction`` with the state before it, then apply it; return the copy."""
        env = self.expansion_env()
        expanded = expand_instruction(
            instruction, lambda word: expand_word(word, env, escape=self.escape))
        self.apply(expanded)
        return expanded

    def apply(self, instruction: Instruction) -> None:
        """Record the effect of an already expanded instruction on ENV/ARG/SHELL/WORKDIR/USER."""
        if isinstance(instruction, EnvInstruction):
            for pair in instruction.pairs:
                self.env[pair.key] = pair.value
        elif isinstance(instruction, ArgInstruction):
            for decl in instruction.args:
                self.args[decl.name] = self._arg_value(decl.name, decl.default)
        elif isinstance(instruction, ShellInstruction):
            self.shell = instruction.args
        elif isinstance(instruction, WorkdirInstruction):
            self.workdir = posixpath.normpath(posixpath.join("/", self.workdir,
                                                             instruction.path))
        elif isinstance(instruction, UserInstruction):
            self.user = instruction.user

    def _arg_value(self, name: str, default: str | None) -> str | None:
        if name in self.build_args:
            return self.build_args[name]
        if default is not None:
            return default
        return self.meta_args.get(name)

    def arg_env(self) -> dict[str, str]:
        """Build args declared by ARG so far, those shadowed by ENV excluded: what Docker's
        history (``|N K=V cmd``) and cache key for RUN include."""
        return {key: value for key, value in self.args.items()
                if value is not None and key not in self.env}

    def proxy_env(self) -> dict[str, str]:
        """Predefined proxy args given with ``--build-arg`` but not declared: a RUN sees them,
        but Docker keeps them out of history and the cache key (they may hold credentials)."""
        declared = self.arg_env()
        return {key: self.build_args[key] for key in sorted(PROXY_ARGS & self.build_args.keys())
                if key not in self.env and key not in declared and key not in self.args}

    def cache_env(self) -> list[str]:
        """The RUN environment less `proxy_env`: what the step's cache key includes."""
        merged = dict(self.env)
        merged.update(self.arg_env())
        return [f"{key}={value}" for key, value in merged.items()]

    def run_env(self) -> list[str]:
        """The ``KEY=VALUE`` environment of a RUN: the image Env, `arg_env`, `proxy_env`."""
        merged = dict(self.env)
        merged.update(self.arg_env())
        merged.update(self.proxy_env())
        return [f"{key}={value}" for key, value in merged.items()]

    def config_env(self) -> list[str]:
        """The image config's Env (ARGs are never persisted)."""
        return [f"{key}={value}" for key, value in self.env.items()]


@dataclass(frozen=True, kw_only=True)
class RunCommand:
    """What a RUN executes: ``argv``, after placing each of ``files`` (path, content) in the
    container as an executable file (a heredoc script with a ``#!`` line)."""

    argv: tuple[str, ...]
    files: tuple[tuple[str, str], ...] = ()


def command_argv(instruction: CmdInstruction | EntrypointInstruction | RunInstruction,
                 shell: Sequence[str] = DEFAULT_SHELL) -> tuple[str, ...]:
    """Exec form as is; shell form as ``shell + [command]`` (what goes into Cmd/Entrypoint)."""
    if instruction.json:
        return instruction.args
    return (*shell, instruction.args[0])


def run_command(instruction: RunInstruction,
                shell: Sequence[str] = DEFAULT_SHELL) -> RunCommand:
    """The command of a RUN, heredocs included, as BuildKit runs it.

    ``RUN <<EOF`` alone runs the body as the shell's script (or, with a ``#!`` first line, as an
    executable file); any other use (``RUN cat <<EOF >f``, ``RUN python3 <<EOF``) hands the
    line, the bodies and their delimiters to the shell, which reads the heredocs itself.
    """
    if instruction.json or not instruction.heredocs:
        return RunCommand(argv=command_argv(instruction, shell))
    line = instruction.args[0]
    words = split_words(line)
    if len(instruction.heredocs) == 1 and len(words) == 1 and HEREDOC_WORD.match(words[0]):
        doc = instruction.heredocs[0]
        body = doc.text
        if body.startswith("#!"):
            path = "/dev/pipes/" + (re.sub(r"[^A-Za-z0-9_.-]", "_", doc.name) or "script")
            return RunCommand(argv=(path,), files=((path, body),))
        return RunCommand(argv=(*shell, body))
    full = line + "".join("\n" + doc.content + doc.name for doc in instruction.heredocs)
    return RunCommand(argv=(*shell, full))


_PROTOCOLS = ("tcp", "udp", "sctp")


def port_specs(ports: Iterable[str]) -> tuple[str, ...]:
    """Normalise EXPOSE words to sorted ``port/proto`` keys (``8000-8002`` gives three).

    A ``[ip:][hostport:]`` prefix is ignored as Docker does for EXPOSE.
    """
    found: set[tuple[int, str]] = set()
    for word in ports:
        spec, _, proto = word.partition("/")
        proto = (proto or "tcp").lower()
        port = spec.rsplit(":", 1)[-1]
        low, _, high = port.partition("-")
        if proto not in _PROTOCOLS or not low.isdigit() or (high and not high.isdigit()):
            raise BuildError(f"invalid port {word!r} in EXPOSE",
                             hint="use PORT, PORT/tcp, PORT/udp or START-END[/proto]")
        first, last = int(low), int(high or low)
        if last < first or last > 65535:
            raise BuildError(f"invalid port range {word!r} in EXPOSE")
        found.update((number, proto) for number in range(first, last + 1))
    return tuple(f"{number}/{proto}" for number, proto in sorted(found))


def parse_signal(text: str) -> int:
    """A STOPSIGNAL value (``SIGTERM``, ``TERM``, ``9``, ``SIGRTMIN+3``) as a number."""
    if text.isdigit() and int(text) > 0:
        return int(text)
    name = text.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    match = re.fullmatch(r"SIGRT(MIN|MAX)([+-]\d+)?", name)
    if match:
        base = _signal.SIGRTMIN if match.group(1) == "MIN" else _signal.SIGRTMAX
        value = int(base) + int(match.group(2) or 0)
        if int(_signal.SIGRTMIN) <= value <= int(_signal.SIGRTMAX):
            return value
    elif name in _signal.Signals.__members__:
        return int(_signal.Signals[name])
    raise BuildError(f"invalid STOPSIGNAL {text!r}", hint="use a name such as SIGTERM or a number")
