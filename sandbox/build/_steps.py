"""Instructions that only change the image config, and the history text of every step.

History ``created_by`` follows Docker's classic builder: ``/bin/sh -c #(nop)  ENV A=b`` for a
config-only step, the command itself for RUN (``|1 X=y /bin/sh -c make`` when build args are in
effect), ``/bin/sh -c #(nop) COPY file:<hash> in /dst `` for COPY/ADD.
"""

from __future__ import annotations

import json
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

__all__ = ["StageFlags", "METADATA_TYPES", "apply_metadata", "nop", "run_created_by"]

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
    return f"{NOP} {text}"


def run_created_by(argv: tuple[str, ...], build_args: dict[str, str]) -> str:
    command = " ".join(argv)
    if not build_args:
        return command
    pairs = " ".join(f"{k}={v}" for k, v in sorted(build_args.items()))
    return f"|{len(build_args)} {pairs} {command}"


def _json(items: Any) -> str:
    return json.dumps(list(items))


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
            return nop(f"CMD {_json(argv)}")
        _set(cfg, "Entrypoint", argv)
        if not flags.cmd_set:
            cfg.pop("Cmd", None)
        return nop(f"ENTRYPOINT {_json(argv)}")
    return _apply_more(image, step, state)


def _apply_more(image: ImageState, step: Instruction, state: BuildState) -> str:
    cfg = image.config
    if isinstance(step, WorkdirInstruction):
        cfg["WorkingDir"] = state.workdir
        return nop(f"WORKDIR {state.workdir}")
    if isinstance(step, UserInstruction):
        _set(cfg, "User", step.user)
        return nop(f"USER {step.user}")
    if isinstance(step, ExposeInstruction):
        ports = dict(cfg.get("ExposedPorts") or {})
        ports.update({p: {} for p in port_specs(step.ports)})
        cfg["ExposedPorts"] = dict(sorted(ports.items()))
        return nop("EXPOSE " + " ".join(sorted(ports)))
    if isinstance(step, VolumeInstruction):
        volumes = dict(cfg.get("Volumes") or {})
        volumes.update({p: {} for p in step.paths if p})
        cfg["Volumes"] = volumes
        return nop(f"VOLUME {_json(step.paths)}")
    if isinstance(step, StopSignalInstruction):
        parse_signal(step.signal)
        cfg["StopSignal"] = step.signal
        return nop(f"STOPSIGNAL {step.signal}")
    if isinstance(step, HealthcheckInstruction):
        cfg["Healthcheck"] = _healthcheck(step)
        return nop(f"HEALTHCHECK &{{{_json(step.test)}}}")
    if isinstance(step, ShellInstruction):
        cfg["Shell"] = list(step.args)
        return nop(f"SHELL {_json(step.args)}")
    if isinstance(step, OnbuildInstruction):
        cfg["OnBuild"] = [*(cfg.get("OnBuild") or []), step.expression]
        return nop(f"ONBUILD {step.expression}")
    if isinstance(step, MaintainerInstruction):
        image.author = step.maintainer
        return nop(f"MAINTAINER {step.maintainer}")
    raise TypeError(f"{type(step).__name__} is not a config-only instruction")
