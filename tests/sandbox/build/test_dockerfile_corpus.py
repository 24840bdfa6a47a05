"""Corpus of Dockerfiles with the expected parse and step-by-step expansion.

Each ``corpus/NAME.Dockerfile`` has a ``corpus/NAME.expected`` whose first line gives the build
args as JSON; the rest is the dump below. Regenerate after a deliberate change with
``SANDBOX_REGEN_CORPUS=1 pytest tests/sandbox/build/test_dockerfile_corpus.py`` and review the
diff line by line.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from sandbox.build import (
    AddInstruction,
    BuildState,
    CopyInstruction,
    Dockerfile,
    Instruction,
    RunInstruction,
    parse_dockerfile,
    resolve_target,
    run_command,
    stage_dependencies,
    unused_build_args,
)

CORPUS = Path(__file__).parent / "corpus"
BASE_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
_SKIP = {"line", "end_line", "original"}


def _compact(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if f.name in _SKIP or (f.default is not dataclasses.MISSING and item == f.default):
                continue
            out[f.name] = _compact(item)
        return out
    if isinstance(value, tuple | list):
        return [_compact(item) for item in value]
    return value


def _step_line(state: BuildState, step: Instruction) -> list[str]:
    lines = [f"  L{step.line}-{step.end_line} {step.keyword} "
             f"{json.dumps(_compact(step), ensure_ascii=False)}"]
    if isinstance(step, RunInstruction):
        command = run_command(step, state.shell)
        lines.append(f"    argv {json.dumps(list(command.argv), ensure_ascii=False)}")
        for path, content in command.files:
            lines.append(f"    file {path} {json.dumps(content, ensure_ascii=False)}")
        lines.append(f"    run_env {json.dumps(state.run_env(), ensure_ascii=False)}")
    if isinstance(step, CopyInstruction | AddInstruction):
        for doc in step.heredocs:
            content = state.heredoc_content(doc)
            lines.append(f"    content {doc.name} {json.dumps(content, ensure_ascii=False)}")
    return lines


def dump(dockerfile: Dockerfile) -> str:
    lines = [f"directives {json.dumps(dict(dockerfile.directives))} escape {dockerfile.escape}",
             f"meta_args {json.dumps(dict(dockerfile.meta_args), sort_keys=True)}"]
    for stage in dockerfile.stages:
        lines.append(f"stage {stage.index} name={stage.name} base={stage.base} "
                     f"platform={stage.platform} base_stage={stage.base_stage} "
                     f"deps={list(stage_dependencies(dockerfile, stage))} L{stage.line}")
        state = BuildState.for_stage(dockerfile, stage, env=BASE_ENV)
        for raw in stage.instructions:
            step = state.step(raw)
            lines.extend(_step_line(state, step))
        lines.append(f"  env {json.dumps(state.config_env(), ensure_ascii=False)}")
        lines.append(f"  shell {json.dumps(list(state.shell))} workdir={state.workdir!r} "
                     f"user={state.user!r}")
    lines.append(f"target {[stage.index for stage in resolve_target(dockerfile)]}")
    lines.append(f"unused_build_args {unused_build_args(dockerfile)}")
    return "\n".join(lines) + "\n"


CASES = sorted(path.stem for path in CORPUS.glob("*.Dockerfile"))
BUILD_ARGS = {
    "04_args": {"VERSION": "2.0", "MODE": "release", "HTTP_PROXY": "http://proxy:3128",
                "UNUSED": "x"},
}


@pytest.mark.parametrize("name", CASES)
def test_corpus(name: str) -> None:
    text = (CORPUS / f"{name}.Dockerfile").read_text(encoding="utf-8")
    build_args = BUILD_ARGS.get(name, {})
    got = f"build-args {json.dumps(build_args, sort_keys=True)}\n" + dump(
        parse_dockerfile(text, build_args=build_args))
    expected_path = CORPUS / f"{name}.expected"
    if os.environ.get("SANDBOX_REGEN_CORPUS"):
        expected_path.write_text(got, encoding="utf-8")
    assert got == expected_path.read_text(encoding="utf-8")


def test_corpus_covers_every_instruction() -> None:
    seen: set[str] = set()
    for name in CASES:
        text = (CORPUS / f"{name}.Dockerfile").read_text(encoding="utf-8")
        for stage in parse_dockerfile(text, build_args=BUILD_ARGS.get(name, {})).stages:
            seen.add("FROM")
            seen.update(i.keyword for i in stage.instructions)
    assert seen == {"FROM", "RUN", "CMD", "ENTRYPOINT", "SHELL", "ENV", "LABEL", "ARG", "COPY",
                    "ADD", "WORKDIR", "USER", "EXPOSE", "VOLUME", "STOPSIGNAL", "HEALTHCHECK",
                    "ONBUILD", "MAINTAINER"}
