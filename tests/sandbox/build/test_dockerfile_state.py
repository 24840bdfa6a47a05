"""BuildState (ENV/ARG scoping step by step), RUN commands, ports, signals, target resolution."""

from __future__ import annotations

import signal

import pytest

from sandbox.build import (
    BuildState,
    CmdInstruction,
    CopyInstruction,
    EnvInstruction,
    ExpansionError,
    LabelInstruction,
    RunInstruction,
    command_argv,
    parse_dockerfile,
    parse_signal,
    port_specs,
    resolve_target,
    run_command,
    stage_dependencies,
    unused_build_args,
)
from sandbox.errors import BuildError


def run_stage(text: str, *, build_args: dict[str, str] | None = None,
              env: list[str] | None = None, index: int = -1) -> tuple[BuildState, list]:
    df = parse_dockerfile(text, build_args=build_args)
    stage = df.stages[index]
    state = BuildState.for_stage(df, stage, env=env or [])
    return state, [state.step(raw) for raw in stage.instructions]


def test_global_arg_is_only_visible_in_from_unless_redeclared() -> None:
    state, (env1, _, env2) = run_stage(
        "ARG V=1\nFROM a\nENV X=${V:-unset}\nARG V\nENV Y=$V\n")
    assert isinstance(env1, EnvInstruction) and isinstance(env2, EnvInstruction)
    assert env1.pairs[0].value == "unset" and env2.pairs[0].value == "1"


def test_build_arg_overrides_global_and_stage_defaults() -> None:
    state, _ = run_stage("ARG V=1\nFROM a\nARG V\nARG W=2\n",
                         build_args={"V": "9", "W": "8"})
    assert state.args == {"V": "9", "W": "8"}


def test_stage_default_wins_over_global_value_without_build_arg() -> None:
    state, _ = run_stage("ARG V=global\nFROM a\nARG V=stage\n")
    assert state.args == {"V": "stage"}


def test_builtin_args_need_a_declaration_inside_a_stage() -> None:
    df = parse_dockerfile("FROM a\nARG TARGETARCH\nENV A=$TARGETARCH B=$TARGETOS\n",
                          builtin_args={"TARGETARCH": "amd64", "TARGETOS": "linux"})
    state = BuildState.for_stage(df, df.stages[0])
    steps = [state.step(raw) for raw in df.stages[0].instructions]
    assert isinstance(steps[1], EnvInstruction)
    assert [p.value for p in steps[1].pairs] == ["amd64", ""]


def test_env_wins_over_arg_and_args_are_not_persisted() -> None:
    state, steps = run_stage("FROM a\nARG A=arg\nENV A=env\nARG A=again\nLABEL a=$A\n",
                             build_args={"A": "cli"})
    label = steps[-1]
    assert isinstance(label, LabelInstruction) and label.pairs[0].value == "env"
    assert state.config_env() == ["A=env"]
    assert state.run_env() == ["A=env"]


def test_env_substitution_uses_values_before_the_instruction() -> None:
    state, (first, second) = run_stage("FROM a\nENV abc=hello\nENV abc=bye def=$abc\n")
    assert isinstance(second, EnvInstruction)
    assert [(p.key, p.value) for p in second.pairs] == [("abc", "bye"), ("def", "hello")]
    assert state.env == {"abc": "bye", "def": "hello"}


def test_base_image_env_is_visible_and_updated_in_place() -> None:
    state, _ = run_stage("FROM a\nENV PATH=/opt/bin:$PATH LANG=C\n",
                         env=["PATH=/usr/bin:/bin", "HOME=/root"])
    assert state.config_env() == ["PATH=/opt/bin:/usr/bin:/bin", "HOME=/root", "LANG=C"]


def test_run_env_has_declared_args_and_passed_proxy_args() -> None:
    state, _ = run_stage("FROM a\nARG DECLARED=1\nARG UNSET\nENV E=2\n",
                         build_args={"http_proxy": "http://p:3128", "OTHER": "x"})
    assert state.run_env() == ["E=2", "DECLARED=1", "http_proxy=http://p:3128"]
    # undeclared proxy args: in the RUN environment, not in history nor the cache key
    assert state.arg_env() == {"DECLARED": "1"}
    assert state.proxy_env() == {"http_proxy": "http://p:3128"}
    assert state.cache_env() == ["E=2", "DECLARED=1"]


def test_declared_proxy_arg_is_an_ordinary_arg() -> None:
    state, _ = run_stage("FROM a\nARG HTTPS_PROXY\n",
                         build_args={"HTTPS_PROXY": "http://p:1", "no_proxy": "local"})
    assert state.arg_env() == {"HTTPS_PROXY": "http://p:1"}
    assert state.proxy_env() == {"no_proxy": "local"}
    assert state.cache_env() == ["HTTPS_PROXY=http://p:1"]
    assert state.run_env() == ["HTTPS_PROXY=http://p:1", "no_proxy=local"]


def test_run_mounts_are_expanded_but_not_the_command() -> None:
    _, (_, run) = run_stage(
        "FROM a\nARG CACHE=/c\nRUN --mount=type=cache,target=$CACHE echo $CACHE\n")
    assert isinstance(run, RunInstruction)
    assert run.mounts[0].target == "/c" and run.args == ("echo $CACHE",)


def test_workdir_user_shell_are_tracked() -> None:
    state, steps = run_stage('FROM a\nENV D=/srv\nWORKDIR $D\nWORKDIR app/../lib\nUSER 1:2\n'
                             'SHELL ["/bin/bash", "-c"]\nRUN echo\nCMD echo hi\n', )
    assert (state.workdir, state.user, state.shell) == ("/srv/lib", "1:2", ("/bin/bash", "-c"))
    run, cmd = steps[-2], steps[-1]
    assert isinstance(run, RunInstruction) and isinstance(cmd, CmdInstruction)
    assert run_command(run, state.shell).argv == ("/bin/bash", "-c", "echo")
    assert command_argv(cmd, state.shell) == ("/bin/bash", "-c", "echo hi")


def test_expansion_errors_carry_the_line() -> None:
    df = parse_dockerfile("FROM a\n\nENV A=\"${B:?B is required}\"\n")
    state = BuildState.for_stage(df, df.stages[0])
    with pytest.raises(ExpansionError) as info:
        state.step(df.stages[0].instructions[0])
    assert info.value.line == 3 and "B: B is required" in info.value.message


def test_copy_heredoc_content() -> None:
    state, (_, copy) = run_stage("FROM a\nENV N=world\nCOPY <<EOF <<'RAW' /d/\nhi $N\nEOF\n"
                                 "hi $N\nRAW\n")
    assert isinstance(copy, CopyInstruction)
    assert [state.heredoc_content(d) for d in copy.heredocs] == ["hi world\n", "hi $N\n"]


@pytest.mark.parametrize(("dockerfile", "argv", "files"), [
    ("RUN echo", ("/bin/sh", "-c", "echo"), ()),
    ('RUN ["a", "b"]', ("a", "b"), ()),
    ("RUN <<EOF\necho 1\nEOF", ("/bin/sh", "-c", "echo 1\n"), ()),
    ("RUN <<-EOF\n\techo 1\n\tEOF", ("/bin/sh", "-c", "echo 1\n"), ()),
    ("RUN <<EOF\n#!/bin/python3\nprint()\nEOF", ("/dev/pipes/EOF",),
     (("/dev/pipes/EOF", "#!/bin/python3\nprint()\n"),)),
    ("RUN python3 <<EOF\nprint()\nEOF", ("/bin/sh", "-c", "python3 <<EOF\nprint()\nEOF"), ()),
    ("RUN <<A <<B\na\nA\nb\nB", ("/bin/sh", "-c", "<<A <<B\na\nA\nb\nB"), ()),
])
def test_run_command(dockerfile: str, argv: tuple[str, ...],
                     files: tuple[tuple[str, str], ...]) -> None:
    (run,) = parse_dockerfile("FROM a\n" + dockerfile + "\n").stages[0].instructions
    assert isinstance(run, RunInstruction)
    command = run_command(run)
    assert (command.argv, command.files) == (argv, files)


def test_port_specs() -> None:
    assert port_specs(["80", "53/UDP", "8000-8002", "127.0.0.1:9000:90/tcp", "80/tcp"]) == (
        "53/udp", "80/tcp", "90/tcp", "8000/tcp", "8001/tcp", "8002/tcp")
    for bad in ["http", "80/icmp", "90-80", "70000", "1-x"]:
        with pytest.raises(BuildError):
            port_specs([bad])


def test_parse_signal() -> None:
    assert parse_signal("SIGTERM") == signal.SIGTERM
    assert parse_signal("kill") == signal.SIGKILL
    assert parse_signal("9") == 9
    assert parse_signal("SIGRTMIN+2") == signal.SIGRTMIN + 2
    for bad in ["SIGNOPE", "0", "-1", "RTMAX+5"]:
        with pytest.raises(BuildError):
            parse_signal(bad)


MULTI = """\
ARG SRC=builder
FROM alpine AS base
FROM base AS builder
RUN make
FROM alpine AS tools
FROM alpine AS docs
RUN --mount=type=bind,from=tools,target=/t true
FROM scratch AS final
ARG SRC
COPY --from=$SRC /out /
COPY --from=0 /etc/os-release /
COPY --from=busybox:latest /bin/busybox /
FROM final AS debug
COPY --from=docs / /docs
"""


def test_resolve_target_only_needed_stages() -> None:
    df = parse_dockerfile(MULTI)
    assert [s.name for s in resolve_target(df, "final")] == ["base", "builder", "final"]
    assert [s.name for s in resolve_target(df)] == [
        "base", "builder", "tools", "docs", "final", "debug"]
    assert [s.name for s in resolve_target(df, "TOOLS")] == ["tools"]
    assert stage_dependencies(df, df.stages[3]) == (2,)


def test_resolve_target_follows_build_args_in_copy_from() -> None:
    df = parse_dockerfile(MULTI, build_args={"SRC": "tools"})
    assert [s.name for s in resolve_target(df, "final")] == ["base", "tools", "final"]


def test_unknown_target_and_bad_stage_index() -> None:
    df = parse_dockerfile(MULTI)
    with pytest.raises(BuildError, match="target stage 'nope' could not be found") as info:
        resolve_target(df, "nope")
    assert info.value.hint and "final" in info.value.hint
    bad = parse_dockerfile("FROM a AS x\nCOPY --from=1 / /\nFROM b\n")
    with pytest.raises(BuildError, match="Dockerfile:1: .*current or a later stage"):
        resolve_target(bad, "x")


def test_find_stage() -> None:
    df = parse_dockerfile(MULTI)
    assert df.find_stage("Builder", before=5) is df.stages[1]
    assert df.find_stage("debug", before=5) is None
    assert df.find_stage("busybox:latest") is None


def test_unused_build_args() -> None:
    df = parse_dockerfile(MULTI, build_args={"SRC": "x", "NOPE": "1", "HTTPS_PROXY": "p"})
    assert unused_build_args(df) == ["NOPE"]
