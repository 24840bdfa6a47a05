"""Dockerfile text to a `Dockerfile` of stages (BuildKit ``frontend/dockerfile/parser``).

Lexical rules, in BuildKit's order: a UTF-8 BOM is dropped; parser directives (``# syntax=``,
``# escape=``, ``# check=``) are read only from the leading comment lines, each at most once; a
line whose first non-blank character is ``#`` is a comment, also inside a continuation; a line
ending in the escape character (then optional blanks) continues on the next line, which is
appended as is (its leading blanks kept, the escape removed); blank lines inside a continuation
are skipped; RUN, COPY and ADD (also as ONBUILD triggers) read one here-document body per
``<<NAME`` word, in order, after the logical line.

Only ARG may come before the first FROM; those global ARGs are expanded (with ``build_args``
overriding their defaults) into the FROM lines and nowhere else.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from sandbox.build._errors import DockerfileSyntaxError, ExpansionError
from sandbox.build.commands import (
    Node,
    build_instruction,
    can_contain_heredoc,
    heredoc_markers,
    make_node,
)
from sandbox.build.instructions import (
    ArgInstruction,
    FromInstruction,
    Heredoc,
    Instruction,
    expand_instruction,
)
from sandbox.build.shell import expand_word
from sandbox.errors import BuildError

__all__ = ["Dockerfile", "Stage", "parse_dockerfile", "parse_instruction"]

_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_KNOWN_DIRECTIVES = ("syntax", "escape", "check")
_BLANKS = " \t\f\v\r"


@dataclass(frozen=True, kw_only=True)
class Stage:
    """One ``FROM`` and the instructions after it, up to the next FROM."""

    index: int
    name: str | None
    """The ``AS`` name, lower-cased (stage names are case-insensitive)."""
    base: str
    """The FROM image after expansion with the global ARGs: a reference, ``scratch``, or the
    name of an earlier stage (then ``base_stage`` is its index)."""
    platform: str | None
    """``--platform`` after expansion, None when absent."""
    base_stage: int | None
    from_instruction: FromInstruction
    instructions: tuple[Instruction, ...]

    @property
    def line(self) -> int:
        return self.from_instruction.line


@dataclass(frozen=True, kw_only=True)
class Dockerfile:
    """A parsed Dockerfile; instruction words are as written (see `BuildState.step`)."""

    stages: tuple[Stage, ...]
    global_args: tuple[ArgInstruction, ...]
    """The ARGs before the first FROM."""
    directives: Mapping[str, str] = field(default_factory=dict)
    """Parser directives by lower-case name (``syntax``, ``escape``, ``check``)."""
    escape: str = "\\"
    meta_args: Mapping[str, str] = field(default_factory=dict)
    """Values of the global ARGs (and ``builtin_args``) as the FROM lines saw them."""
    build_args: Mapping[str, str] = field(default_factory=dict)

    @property
    def last_stage(self) -> Stage:
        return self.stages[-1]

    def find_stage(self, ref: str, *, before: int | None = None) -> Stage | None:
        """The stage that ``ref`` (a name or, as for ``COPY --from``, an index) names.

        Only stages before index ``before`` count (the stages a step may use); a name that is
        no such stage is an image reference and gives None. An index that is not an earlier
        stage is a `BuildError`.
        """
        limit = len(self.stages) if before is None else before
        if ref.isdigit():
            index = int(ref)
            if index >= limit:
                raise BuildError(f"stage index {index} refers to the current or a later stage",
                                 hint=f"use an index below {limit} or a stage name")
            return self.stages[index]
        name = ref.lower()
        return next((s for s in self.stages[:limit] if s.name == name), None)

    def stage(self, target: str) -> Stage:
        """The stage named ``target`` (``--target``); a `BuildError` when there is none."""
        name = target.lower()
        for stage in self.stages:
            if stage.name == name:
                return stage
        names = ", ".join(s.name for s in self.stages if s.name) or "none"
        raise BuildError(f"target stage {target!r} could not be found",
                         hint=f"stages with a name: {names}")


def _split_lines(text: str) -> list[str]:
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _continues(text: str, escape: str) -> tuple[str, bool]:
    """Strip a trailing escape character (and blanks after it); True if there was one."""
    body = text.rstrip(" \t")
    if body.endswith(escape):
        return body[: -len(escape)], True
    return text, False


class _Reader:
    """Walks the lines, yielding `Node`s; keeps the directives it met."""

    def __init__(self, text: str) -> None:
        self.lines = _split_lines(text)
        self.pos = 0
        self.escape = "\\"
        self.directives: dict[str, str] = {}
        self.in_directives = True

    def directive(self, stripped: str, lineno: int) -> bool:
        """Record a parser directive; False once the leading comment block is over."""
        match = _DIRECTIVE.match(stripped)
        key = match.group(1).lower() if match else ""
        if not match or key not in _KNOWN_DIRECTIVES:
            self.in_directives = False
            return False
        if key in self.directives:
            raise DockerfileSyntaxError(f"only one {key} parser directive can be used",
                                        line=lineno)
        value = match.group(2)
        if key == "escape":
            if value not in ("\\", "`"):
                raise DockerfileSyntaxError(
                    f"invalid escape token {value!r} does not validate", line=lineno,
                    hint="the escape directive takes a backslash or a backtick")
            self.escape = value
        self.directives[key] = value
        return True

    def nodes(self) -> list[Node]:
        found: list[Node] = []
        while self.pos < len(self.lines):
            node = self.next_node()
            if node is not None:
                found.append(node)
        return found

    def next_node(self) -> Node | None:
        self.pos += 1
        start = self.pos
        stripped = self.lines[start - 1].lstrip(_BLANKS)
        if self.in_directives and self.directive(stripped, start):
            return None
        if stripped.startswith("#"):
            return None
        text, more = _continues(stripped, self.escape)
        if not more and not text.strip():
            return None
        while more:
            if self.pos >= len(self.lines):
                raise DockerfileSyntaxError(
                    "unexpected end of file: the last line ends with a line continuation",
                    line=start, hint=f"remove the trailing {self.escape!r} or add a line")
            raw = self.lines[self.pos]
            self.pos += 1
            body = raw.lstrip(_BLANKS)
            if body.startswith("#") or not body:
                continue
            part, more = _continues(raw, self.escape)
            text += part
        heredocs = self.heredocs(text, start) if "<<" in text else ()
        return make_node(text, line=start, end_line=self.pos, escape=self.escape,
                         heredocs=heredocs)

    def heredocs(self, text: str, start: int) -> tuple[Heredoc, ...]:
        if not can_contain_heredoc(text):
            return ()
        bodies: list[Heredoc] = []
        for marker in heredoc_markers(text):
            lines: list[str] = []
            while True:
                if self.pos >= len(self.lines):
                    raise DockerfileSyntaxError(
                        f"unterminated heredoc <<{marker.name}", line=start,
                        hint=f"end it with a line that is exactly {marker.name}")
                raw = self.lines[self.pos]
                self.pos += 1
                if (raw.lstrip("\t") if marker.chomp else raw) == marker.name:
                    break
                lines.append(raw + "\n")
            bodies.append(dataclasses.replace(marker, content="".join(lines)))
        return tuple(bodies)


def parse_instruction(text: str, *, escape: str = "\\", line: int = 1) -> Instruction:
    """Parse one instruction (an ONBUILD trigger read back from an image config)."""
    reader = _Reader(text)
    reader.escape = escape
    reader.in_directives = False
    nodes = reader.nodes()
    if len(nodes) != 1:
        raise DockerfileSyntaxError(f"expected one instruction, got {len(nodes)}: {text!r}",
                                    line=line)
    node = dataclasses.replace(nodes[0], line=line, end_line=line + nodes[0].end_line - 1)
    return build_instruction(node)


def _global_args(args: list[ArgInstruction], build_args: Mapping[str, str],
                 builtin_args: Mapping[str, str], escape: str) -> dict[str, str]:
    meta: dict[str, str] = dict(builtin_args)
    for instruction in args:
        expanded = expand_instruction(instruction,
                                      lambda word: expand_word(word, meta, escape=escape))
        for decl in expanded.args:
            if decl.name in build_args:
                meta[decl.name] = build_args[decl.name]
            elif decl.default is not None:
                meta[decl.name] = decl.default
    return meta


def _make_stage(index: int, instruction: FromInstruction, body: list[Instruction],
                meta: Mapping[str, str], escape: str, earlier: list[Stage]) -> Stage:
    def expand(word: str) -> str:
        return expand_word(word, meta, escape=escape)

    try:
        base = expand(instruction.base)
        platform = None if instruction.platform is None else expand(instruction.platform)
    except ExpansionError as exc:
        raise ExpansionError(f"FROM: {exc.reason}", line=instruction.line) from exc
    if not base:
        raise DockerfileSyntaxError(f"base name ({instruction.base}) should not be blank",
                                    line=instruction.line,
                                    hint="pass the missing ARG with --build-arg")
    base_stage = next((s.index for s in earlier if s.name == base.lower()), None)
    return Stage(index=index, name=instruction.name, base=base, platform=platform or None,
                 base_stage=base_stage, from_instruction=instruction,
                 instructions=tuple(body))


def parse_dockerfile(text: str, *, build_args: Mapping[str, str] | None = None,
                     builtin_args: Mapping[str, str] | None = None) -> Dockerfile:
    """Parse a Dockerfile.

    ``build_args`` are the ``--build-arg`` values; ``builtin_args`` the automatic ones the
    builder defines (``TARGETPLATFORM``, ``TARGETOS``, ``TARGETARCH``, ``BUILDPLATFORM``, ...),
    usable in FROM lines and by an in-stage ``ARG NAME``. Raises `DockerfileSyntaxError`
    (a `BuildError`) with the line number.
    """
    build_args = dict(build_args or {})
    builtin_args = dict(builtin_args or {})
    reader = _Reader(text)
    nodes = reader.nodes()
    if not nodes:
        raise DockerfileSyntaxError("the Dockerfile has no instructions",
                                    hint="start it with FROM")
    global_args: list[ArgInstruction] = []
    groups: list[tuple[FromInstruction, list[Instruction]]] = []
    for node in nodes:
        instruction = build_instruction(node)
        if isinstance(instruction, FromInstruction):
            groups.append((instruction, []))
        elif groups:
            groups[-1][1].append(instruction)
        elif isinstance(instruction, ArgInstruction):
            global_args.append(instruction)
        else:
            raise DockerfileSyntaxError(
                f"{instruction.keyword} is not allowed before the first FROM", line=node.line,
                hint="only ARG and comments may come before FROM")
    if not groups:
        raise DockerfileSyntaxError("the Dockerfile has no FROM instruction",
                                    line=nodes[-1].line, hint="add FROM image or FROM scratch")
    meta = _global_args(global_args, build_args, builtin_args, reader.escape)
    stages: list[Stage] = []
    for index, (instruction, body) in enumerate(groups):
        if instruction.name and any(s.name == instruction.name for s in stages):
            raise DockerfileSyntaxError(f"duplicate stage name {instruction.name!r}",
                                        line=instruction.line)
        stages.append(_make_stage(index, instruction, body, meta, reader.escape, stages))
    return Dockerfile(stages=tuple(stages), global_args=tuple(global_args),
                      directives=dict(reader.directives), escape=reader.escape,
                      meta_args=meta, build_args=build_args)
