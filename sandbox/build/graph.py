"""Which stages a target needs: FROM an earlier stage, ``COPY --from``, ``RUN --mount from=``."""

from __future__ import annotations

from sandbox.build.instructions import ArgInstruction, CopyInstruction, RunInstruction
from sandbox.build.parser import Dockerfile, Stage
from sandbox.build.state import PROXY_ARGS, BuildState
from sandbox.errors import BuildError

__all__ = ["stage_dependencies", "resolve_target", "unused_build_args"]


def _stage_refs(dockerfile: Dockerfile, stage: Stage) -> list[str]:
    """The ``--from`` words of a stage, expanded with what is known without the base image."""
    state = BuildState.for_stage(dockerfile, stage)
    refs: list[str] = []
    for raw in stage.instructions:
        try:
            step = state.step(raw)
        except BuildError:
            continue  # an expansion that needs the image's Env; the builder will report it
        if isinstance(step, CopyInstruction) and step.from_:
            refs.append(step.from_)
        elif isinstance(step, RunInstruction):
            refs.extend(mount.from_ for mount in step.mounts if mount.from_)
    return refs


def stage_dependencies(dockerfile: Dockerfile, stage: Stage) -> tuple[int, ...]:
    """Indexes of the earlier stages that ``stage`` uses directly, sorted."""
    needed: set[int] = set()
    if stage.base_stage is not None:
        needed.add(stage.base_stage)
    for ref in _stage_refs(dockerfile, stage):
        try:
            found = dockerfile.find_stage(ref, before=stage.index)
        except BuildError as exc:
            raise BuildError(f"Dockerfile:{stage.line}: stage {stage.index}: {exc.message}",
                             hint=exc.hint) from exc
        if found is not None:
            needed.add(found.index)
    return tuple(sorted(needed))


def resolve_target(dockerfile: Dockerfile, target: str | None = None) -> list[Stage]:
    """The stages to build for ``--target`` (the last stage when None), in build order.

    Only the target and the stages it depends on, directly or not, are listed.
    """
    goal = dockerfile.last_stage if target is None else dockerfile.stage(target)
    needed = {goal.index}
    for stage in reversed(dockerfile.stages[: goal.index + 1]):
        if stage.index in needed:
            needed.update(stage_dependencies(dockerfile, stage))
    return [stage for stage in dockerfile.stages if stage.index in needed]


def unused_build_args(dockerfile: Dockerfile) -> list[str]:
    """``--build-arg`` names no ARG declares (Docker warns "were not consumed")."""
    declared = {decl.name for arg in dockerfile.global_args for decl in arg.args}
    for stage in dockerfile.stages:
        for instruction in stage.instructions:
            if isinstance(instruction, ArgInstruction):
                declared.update(decl.name for decl in instruction.args)
    return sorted(name for name in dockerfile.build_args
                  if name not in declared and name not in PROXY_ARGS)
