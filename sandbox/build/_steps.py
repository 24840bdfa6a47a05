"""Instructions that only change the image config, and the history text of every step.

History ``created_by`` follows Docker's classic builder, Go formatting included (``CMD ["a" "b"]``
with ``%q``, ``SHELL [/bin/sh -c]`` with ``%v``): ``/bin/sh -c #(nop)  ENV A=b`` for a
config-only step, the command itself for RUN (``|1 X=y /bin/sh -c make`` when build args are in
effect), ``/bin/sh -c #(nop) COPY file:<hash> in /dst `` for COPY/ADD (one space, and one
for WORKDIR: Docker builds those comments as one word).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sandbox.build._image_state import ImageState
from sandbox.build.instructions import (
    ArgInstruction,
    CmdInstruction,
    EntrypointInstruction,
    EnvInstruction,
    ExposeInstruction,
    HealthcheckInstruction,
    Instruction,
    LabelInstruction,
    MaintainerInstruction,
    OnbuildInstruction,
    ShellInstruction,
    StopSignalInstruction,
    UserInstruction,
    VolumeInstruction,
    WorkdirInstruction,
)
from sandbox.build.state import BuildState, command_argv, parse_signal, port_specs

__all__ = ["StageFlags", "METADATA_TYPES", "apply_metadata", "nop", "nop_string",
           "run_created_by"]

NOP = "/bin/sh -c #(nop) "

METADATA_TYPES = (ArgInstruction, CmdInstruction, EntrypointInstruction, EnvInstruction,
                  ExposeInstruction, HealthcheckInstruction, LabelInstruction,
                  MaintainerInstruction, OnbuildInstruction, ShellInstruction,
                  StopSignalInstruction, UserInstruction, VolumeInstruction)


@dataclass
class StageFlags:
    """Per-stage facts the config rules need (Docker's ``cmdSet``)."""

    cmd_set: bool = False


def nop(text: str) -> str:
    """Docker's ``commit`` comment: the shell, ``#(nop) `` and the text as two words (two
    spaces: ``/bin/sh -c #(nop)  ENV A=b``)."""
    return f"{NOP} {text}"


def nop_string(text: str) -> str:
    """Docker's ``withCmdCommentString`` (WORKDIR, COPY, ADD): one word, one space
    (``/bin/sh -c #(nop) WORKDIR /app``)."""
    return f"{NOP}{text}"


def run_created_by(argv: tuple[str, ...], build_args: dict[str, str]) -> str:
    command = " ".join(argv)
    if not build_args:
        return command
    pairs = " ".join(f"{k}={v}" for k, v in sorted(build_args.items()))
    return f"|{len(build_args)} {pairs} {command}"


def go_quote(text: str) -> str:
    """Go's ``%q`` of a string (``strconv.Quote``)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
               "\t": "\\t", "\v": "\\v"}


def _quoted(items: Any) -> str:
    """Go's ``%q`` of a string slice: ``["a" "b c"]`` (as ``docker history`` shows CMD)."""
    return "[" + " ".join(go_quote(str(i)) for i in items) + "]"


def _plain(items: Any) -> str:
    """Go's ``%v`` of a string slice: ``[a b c]`` (SHELL, VOLUME)."""
    return "[" + " ".join(str(i) for i in items) + "]"


def go_duration(ns: int) -> str:
    """Go's ``time.Duration.String``: ``0s``, ``1.5s``, ``1m30s``, ``250ms``."""
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                return sign + _trim(ns / size) + unit
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    seconds = _trim(rest / 1e9) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{seconds}"
    if minutes:
        return f"{sign}{minutes}m{seconds}"
    return sign + seconds


def _trim(value: float) -> str:
    return f"{value:.9f}".rstrip("0").rstrip(".")


def _go_rune(n: int) -> str:
    """Go's ``%q`` of an int: a rune literal (``'\\x04'`` for 4 retries)."""
    ch = chr(n) if 0 <= n <= 0x10FFFF else "\ufffd"
    if ch in "'\\":
        return "'\\" + ch + "'"
    if ch.isprintable():
        return f"'{ch}'"
    return f"'\\x{n:02x}'" if n < 0x80 else f"'\\u{n:04x}'"


def _healthcheck_text(step: HealthcheckInstruction) -> str:
    """Docker's ``HEALTHCHECK %q`` of the HealthConfig struct."""
    fields = [_quoted(step.test), *(go_quote(go_duration(v)) for v in (
        step.interval, step.timeout, step.start_period, step.start_interval)),
        _go_rune(step.retries)]
    return "&{" + " ".join(fields) + "}"


def _healthcheck(step: HealthcheckInstruction) -> dict[str, Any]:
    out: dict[str, Any] = {"Test": list(step.test)}
    for key, value in (("Interval", step.interval), ("Timeout", step.timeout),
                       ("StartPeriod", step.start_period),
                       ("StartInterval", step.start_interval), ("Retries", step.retries)):
        if value:
            out[key] = value
    return out


def _set(config: dict[str, Any], key: str, value: Any) -> None:
    if value in (None, "", [], {}):
        config.pop(key, None)
    else:
        config[key] = value


def apply_metadata(image: ImageState, step: Instruction, state: BuildState,
                   flags: StageFlags) -> str:
    """Apply a config-only instruction (already expanded and applied to ``state``) to
    ``image``; returns its history text."""
    cfg = image.config
    if isinstance(step, EnvInstruction):
        cfg["Env"] = state.config_env()
        return nop("ENV " + " ".join(f"{p.key}={p.value}" for p in step.pairs))
    if isinstance(step, LabelInstruction):
        labels = dict(cfg.get("Labels") or {})
        labels.update({p.key: p.value for p in step.pairs})
        cfg["Labels"] = labels
        return nop("LABEL " + " ".join(f"{p.key}={p.value}" for p in step.pairs))
    if isinstance(step, ArgInstruction):
        return nop("ARG " + " ".join(a.name if a.default is None else f"{a.name}={a.default}"
                                     for a in step.args))
    if isinstance(step, (CmdInstruction, EntrypointInstruction)):
        argv = list(command_argv(step, state.shell))
        if isinstance(step, CmdInstruction):
            cfg["Cmd"] = argv
            flags.cmd_set = True
            return nop(f"CMD {_quoted(argv)}")
        _set(cfg, "Entrypoint", argv)
        if not flags.cmd_set:
            cfg.pop("Cmd", None)
        return nop(f"ENTRYPOINT {_quoted(argv)}")
    return _apply_more(image, step, state)


def _apply_more(image: ImageState, step: Instruction, state: BuildState) -> str:
    cfg = image.config
    if isinstance(step, WorkdirInstruction):
        cfg["WorkingDir"] = state.workdir
        return nop_string(f"WORKDIR {state.workdir}")
    if isinstance(step, UserInstruction):
        _set(cfg, "User", step.user)
        return nop(f"USER {step.user}")
    if isinstance(step, ExposeInstruction):
        ports = dict(cfg.get("ExposedPorts") or {})
        ports.update({p: {} for p in port_specs(step.ports)})
        cfg["ExposedPorts"] = dict(sorted(ports.items()))
        return nop("EXPOSE " + " ".join(step.ports))
    if isinstance(step, VolumeInstruction):
        volumes = dict(cfg.get("Volumes") or {})
        volumes.update({p: {} for p in step.paths if p})
        cfg["Volumes"] = volumes
        return nop(f"VOLUME {_plain(step.paths)}")
    if isinstance(step, StopSignalInstruction):
        parse_signal(step.signal)
        cfg["StopSignal"] = step.signal
        return nop(f"STOPSIGNAL {step.signal}")
    if isinstance(step, HealthcheckInstruction):
        cfg["Healthcheck"] = _healthcheck(step)
        return nop(f"HEALTHCHECK {_healthcheck_text(step)}")
    if isinstance(step, ShellInstruction):
        cfg["Shell"] = list(step.args)
        return nop(f"SHELL {_plain(step.args)}")
    if isinstance(step, OnbuildInstruction):
        cfg["OnBuild"] = [*(cfg.get("OnBuild") or []), step.expression]
        return nop(f"ONBUILD {step.expression}")
    if isinstance(step, MaintainerInstruction):
        image.author = step.maintainer
        return nop(f"MAINTAINER {step.maintainer}")
    raise TypeError(f"{type(step).__name__} is not a config-only instruction")
