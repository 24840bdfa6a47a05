"""One frozen dataclass per Dockerfile instruction, as parsed (words not yet expanded).

Parsing keeps every word as written (quotes, escapes, ``$VAR``) because expansion depends on
build state (ENV set by earlier steps, the base image's Env); `expand_instruction` returns a copy
with the expandable fields substituted, following BuildKit's choice of which instructions expand
(ADD COPY ENV EXPOSE FROM LABEL STOPSIGNAL USER VOLUME WORKDIR ARG; not RUN, CMD, ENTRYPOINT,
SHELL, HEALTHCHECK, MAINTAINER or ONBUILD).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from sandbox.build._errors import DockerfileSyntaxError, ExpansionError

__all__ = [
    "Instruction", "Heredoc", "KeyValue", "ArgDecl", "RunMount",
    "FromInstruction", "RunInstruction", "CmdInstruction", "EntrypointInstruction",
    "ShellInstruction", "EnvInstruction", "LabelInstruction", "ArgInstruction",
    "CopyInstruction", "AddInstruction", "WorkdirInstruction", "UserInstruction",
    "ExposeInstruction", "VolumeInstruction", "StopSignalInstruction",
    "HealthcheckInstruction", "OnbuildInstruction", "MaintainerInstruction",
    "expand_instruction",
]

WordExpander = Callable[[str], str]
_I = TypeVar("_I", bound="Instruction")


@dataclass(frozen=True, kw_only=True)
class Heredoc:
    """A here-document: ``<<EOF`` (``<<-EOF`` strips leading tabs, a quoted name disables $)."""

    name: str
    """The delimiter word, unquoted; for COPY/ADD also the source file's name."""
    content: str
    """The body as written, each line ending in ``\\n``, the delimiter line excluded."""
    expand: bool = True
    """False when the delimiter was quoted (``<<'EOF'``, ``<<"EOF"``)."""
    chomp: bool = False
    """True for ``<<-``: leading tabs are removed from every body line (see `text`)."""
    fd: int = 0
    """File descriptor prefix (``3<<EOF``), 0 when none."""

    @property
    def text(self) -> str:
        """The body with ``<<-`` tab stripping applied."""
        if not self.chomp:
            return self.content
        return "".join(line.lstrip("\t") for line in self.content.splitlines(keepends=True))


@dataclass(frozen=True, kw_only=True)
class KeyValue:
    """One ``key=value`` of ENV or LABEL."""

    key: str
    value: str


@dataclass(frozen=True, kw_only=True)
class ArgDecl:
    """One name of an ARG instruction; ``default`` is None for ``ARG NAME`` without ``=``."""

    name: str
    default: str | None = None


@dataclass(frozen=True, kw_only=True)
class RunMount:
    """One ``RUN --mount=...`` (BuildKit syntax); unknown keys are kept in ``options``."""

    type: str = "bind"
    target: str = ""
    source: str = ""
    from_: str = ""
    readonly: bool | None = None
    options: tuple[tuple[str, str], ...] = ()

    def option(self, key: str, default: str = "") -> str:
        """The value of an extra option such as ``id``, ``sharing``, ``mode``, ``uid``."""
        return dict(self.options).get(key, default)


@dataclass(frozen=True, kw_only=True)
class Instruction:
    """Common fields of every instruction."""

    keyword: ClassVar[str] = ""
    expands: ClassVar[tuple[str, ...]] = ()
    line: int
    """1-based line where the instruction starts."""
    end_line: int
    """Last line (continuations and heredoc bodies included)."""
    original: str
    """The logical line as written, continuations joined (heredoc bodies not included)."""


@dataclass(frozen=True, kw_only=True)
class FromInstruction(Instruction):
    keyword = "FROM"
    expands: ClassVar[tuple[str, ...]] = ("base", "platform")
    base: str
    name: str | None = None
    """The ``AS`` name, lower-cased; None when absent."""
    platform: str | None = None


@dataclass(frozen=True, kw_only=True)
class _CommandInstruction(Instruction):
    args: tuple[str, ...]
    """Exec form: the JSON list; shell form: one string, the command line as written."""
    json: bool = False
    """True for the exec (JSON) form."""

    @property
    def prepend_shell(self) -> bool:
        return not self.json


@dataclass(frozen=True, kw_only=True)
class RunInstruction(_CommandInstruction):
    keyword = "RUN"
    expands: ClassVar[tuple[str, ...]] = ("mounts",)
    mounts: tuple[RunMount, ...] = ()
    network: str | None = None
    security: str | None = None
    devices: tuple[str, ...] = ()
    heredocs: tuple[Heredoc, ...] = ()


@dataclass(frozen=True, kw_only=True)
class CmdInstruction(_CommandInstruction):
    keyword = "CMD"


@dataclass(frozen=True, kw_only=True)
class EntrypointInstruction(_CommandInstruction):
    keyword = "ENTRYPOINT"


@dataclass(frozen=True, kw_only=True)
class ShellInstruction(Instruction):
    keyword = "SHELL"
    args: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class EnvInstruction(Instruction):
    keyword = "ENV"
    expands: ClassVar[tuple[str, ...]] = ("pairs",)
    pairs: tuple[KeyValue, ...]


@dataclass(frozen=True, kw_only=True)
class LabelInstruction(Instruction):
    keyword = "LABEL"
    expands: ClassVar[tuple[str, ...]] = ("pairs",)
    pairs: tuple[KeyValue, ...]


@dataclass(frozen=True, kw_only=True)
class ArgInstruction(Instruction):
    keyword = "ARG"
    expands: ClassVar[tuple[str, ...]] = ("args",)
    args: tuple[ArgDecl, ...]


@dataclass(frozen=True, kw_only=True)
class _CopyLike(Instruction):
    expands: ClassVar[tuple[str, ...]] = ("sources", "dest", "chown", "chmod", "excludes")
    sources: tuple[str, ...]
    """Source paths (or URLs for ADD); heredoc sources are in ``heredocs`` instead."""
    dest: str
    heredocs: tuple[Heredoc, ...] = ()
    """Inline files (``COPY <<EOF /dst``): each becomes a file named ``Heredoc.name``."""
    chown: str | None = None
    chmod: str | None = None
    link: bool = False
    excludes: tuple[str, ...] = ()
    json: bool = False


@dataclass(frozen=True, kw_only=True)
class CopyInstruction(_CopyLike):
    keyword = "COPY"
    expands: ClassVar[tuple[str, ...]] = (*_CopyLike.expands, "from_")
    from_: str | None = None
    """``--from=`` as written: a stage name, a stage index or an image reference."""
    parents: bool = False


@dataclass(frozen=True, kw_only=True)
class AddInstruction(_CopyLike):
    keyword = "ADD"
    expands: ClassVar[tuple[str, ...]] = (*_CopyLike.expands, "checksum")
    checksum: str | None = None
    keep_git_dir: bool = False
    unpack: bool | None = None


@dataclass(frozen=True, kw_only=True)
class WorkdirInstruction(Instruction):
    keyword = "WORKDIR"
    expands: ClassVar[tuple[str, ...]] = ("path",)
    path: str


@dataclass(frozen=True, kw_only=True)
class UserInstruction(Instruction):
    keyword = "USER"
    expands: ClassVar[tuple[str, ...]] = ("user",)
    user: str


@dataclass(frozen=True, kw_only=True)
class ExposeInstruction(Instruction):
    keyword = "EXPOSE"
    expands: ClassVar[tuple[str, ...]] = ("ports",)
    ports: tuple[str, ...]
    """As written (``80``, ``80/tcp``, ``8000-8010/udp``); see `ports.port_specs`."""


@dataclass(frozen=True, kw_only=True)
class VolumeInstruction(Instruction):
    keyword = "VOLUME"
    expands: ClassVar[tuple[str, ...]] = ("paths",)
    paths: tuple[str, ...]
    json: bool = False


@dataclass(frozen=True, kw_only=True)
class StopSignalInstruction(Instruction):
    keyword = "STOPSIGNAL"
    expands: ClassVar[tuple[str, ...]] = ("signal",)
    signal: str


@dataclass(frozen=True, kw_only=True)
class HealthcheckInstruction(Instruction):
    """``test`` is ``("NONE",)``, ``("CMD", *argv)`` or ``("CMD-SHELL", command)``.

    Durations are nanoseconds as in Docker's ``HealthConfig``; 0 means "inherit/default".
    """

    keyword = "HEALTHCHECK"
    test: tuple[str, ...]
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0


@dataclass(frozen=True, kw_only=True)
class OnbuildInstruction(Instruction):
    keyword = "ONBUILD"
    expression: str
    """The trigger as written after ONBUILD (what goes into the image config's OnBuild)."""
    trigger: Instruction


@dataclass(frozen=True, kw_only=True)
class MaintainerInstruction(Instruction):
    keyword = "MAINTAINER"
    maintainer: str


def _expand_value(value: Any, fn: WordExpander) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, tuple):
        return tuple(_expand_value(item, fn) for item in value)
    if isinstance(value, KeyValue):
        return KeyValue(key=fn(value.key), value=fn(value.value))
    if isinstance(value, RunMount):
        options = tuple((key, fn(val)) for key, val in value.options)
        return dataclasses.replace(value, target=fn(value.target), source=fn(value.source),
                                   from_=fn(value.from_), options=options)
    if isinstance(value, ArgDecl):
        default = None if value.default is None else fn(value.default)
        return ArgDecl(name=fn(value.name), default=default)
    raise TypeError(f"cannot expand {type(value).__name__}")


def expand_instruction(instruction: _I, fn: WordExpander) -> _I:
    """A copy of ``instruction`` with its expandable words passed through ``fn``.

    `ExpansionError` from ``fn`` is re-raised with the instruction's line number.
    """
    fields = type(instruction).expands
    if not fields:
        return instruction
    changes: dict[str, Any] = {}
    try:
        for name in fields:
            changes[name] = _expand_value(getattr(instruction, name), fn)
    except ExpansionError as exc:
        raise ExpansionError(f"{instruction.keyword}: {exc.reason}",
                             line=instruction.line) from exc
    return dataclasses.replace(instruction, **changes)


def syntax_error(message: str, line: int) -> DockerfileSyntaxError:
    """Shorthand used by the parser modules."""
    return DockerfileSyntaxError(message, line=line)
