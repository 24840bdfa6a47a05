"""Lexical rules, every instruction's argument checks, and errors with line numbers."""

from __future__ import annotations

import pytest

from sandbox.build import (
    AddInstruction,
    ArgInstruction,
    CmdInstruction,
    CopyInstruction,
    DockerfileSyntaxError,
    EntrypointInstruction,
    EnvInstruction,
    FromInstruction,
    HealthcheckInstruction,
    Instruction,
    OnbuildInstruction,
    RunInstruction,
    ShellInstruction,
    parse_dockerfile,
    parse_go_duration,
    parse_instruction,
)


def steps(text: str) -> tuple[Instruction, ...]:
    return parse_dockerfile(text).stages[-1].instructions


def only(text: str) -> Instruction:
    (instruction,) = steps("FROM scratch\n" + text)
    return instruction


def error_line(text: str) -> tuple[int, str]:
    with pytest.raises(DockerfileSyntaxError) as info:
        parse_dockerfile(text)
    if info.value.line:
        assert info.value.message.startswith(f"Dockerfile:{info.value.line}: ")
    return info.value.line, info.value.reason


# --- directives -------------------------------------------------------------------------------

def test_directives_are_read_from_the_leading_comments() -> None:
    df = parse_dockerfile("# syntax = docker/dockerfile:1\n#ESCAPE=`\nFROM a\n")
    assert dict(df.directives) == {"syntax": "docker/dockerfile:1", "escape": "`"}
    assert df.escape == "`"


def test_directive_after_a_blank_line_or_instruction_is_a_comment() -> None:
    assert parse_dockerfile("\n# escape=`\nFROM a\n").escape == "\\"
    assert parse_dockerfile("FROM a\n# escape=`\n").directives == {}
    assert parse_dockerfile("# a comment\n# escape=`\nFROM a\n").escape == "\\"


def test_unknown_directive_ends_the_directive_block() -> None:
    df = parse_dockerfile("# foo=bar\n# escape=`\nFROM a\n")
    assert df.directives == {} and df.escape == "\\"


def test_duplicate_and_invalid_directives() -> None:
    assert error_line("# escape=`\n# escape=\\\nFROM a\n") == (
        2, "only one escape parser directive can be used")
    line, reason = error_line("# syntax=x\n# escape=x\nFROM a\n")
    assert line == 2 and "invalid escape token" in reason


def test_backtick_escape_continues_lines_and_keeps_backslashes() -> None:
    run = steps("# escape=`\nFROM a\nRUN dir c:\\ `\n  && echo x\n")[0]
    assert isinstance(run, RunInstruction)
    assert run.args == ("dir c:\\   && echo x",)
    assert (run.line, run.end_line) == (3, 4)


def test_bom_and_crlf_are_accepted() -> None:
    run = steps("\ufeffFROM a\r\nRUN echo \\\r\n  hi\r\n")[0]
    assert isinstance(run, RunInstruction) and run.args == ("echo   hi",)


# --- comments and continuations ----------------------------------------------------------------

def test_comments_and_inline_hash() -> None:
    (run,) = steps("FROM a\n  # indented comment\nRUN echo hi # not a comment\n")
    assert isinstance(run, RunInstruction) and run.args == ("echo hi # not a comment",)


def test_comment_and_blank_lines_inside_a_continuation_are_skipped() -> None:
    (run,) = steps("FROM a\nRUN a \\\n# gone\n\n   \\\n b\n")
    assert isinstance(run, RunInstruction)
    assert run.args == ("a     b",) and (run.line, run.end_line) == (2, 6)


def test_continuation_at_end_of_file_is_an_error() -> None:
    line, reason = error_line("FROM a\nRUN echo \\\n")
    assert line == 2 and "line continuation" in reason
    assert error_line("FROM a\nRUN echo \\\n# only a comment\n")[0] == 2


def test_keywords_are_case_insensitive() -> None:
    assert isinstance(steps("from a\nrun echo\n")[0], RunInstruction)


# --- heredocs ----------------------------------------------------------------------------------

def test_heredoc_body_and_lines() -> None:
    (run, env) = steps("FROM a\nRUN <<EOF\n  indented\n\nEOF\nENV A=1\n")
    assert isinstance(run, RunInstruction) and isinstance(env, EnvInstruction)
    (doc,) = run.heredocs
    assert (doc.name, doc.content, doc.expand, doc.chomp) == ("EOF", "  indented\n\n", True, False)
    assert (run.line, run.end_line, env.line) == (2, 5, 6)


def test_chomp_heredoc_strips_tabs_from_body_and_terminator() -> None:
    (run,) = steps("FROM a\nRUN <<-EOF\n\t\tone\n\ttwo\n\tEOF\n")
    assert isinstance(run, RunInstruction)
    assert run.heredocs[0].content == "\t\tone\n\ttwo\n"
    assert run.heredocs[0].text == "one\ntwo\n"


def test_quoted_delimiters_disable_expansion() -> None:
    (run,) = steps("FROM a\nRUN <<'A' <<\"B\" <<C\na\nA\nb\nB\nc\nC\n")
    assert isinstance(run, RunInstruction)
    assert [(d.name, d.expand) for d in run.heredocs] == [("A", False), ("B", False), ("C", True)]
    assert [d.content for d in run.heredocs] == ["a\n", "b\n", "c\n"]


def test_copy_and_add_heredocs_become_files() -> None:
    copy, add = steps("FROM a\nCOPY <<one.txt src <<two /dst/\n1\none.txt\n2\ntwo\n"
                      "ADD <<EOF /x\nx\nEOF\n")
    assert isinstance(copy, CopyInstruction) and isinstance(add, AddInstruction)
    assert copy.sources == ("src",) and copy.dest == "/dst/"
    assert [(d.name, d.content) for d in copy.heredocs] == [("one.txt", "1\n"), ("two", "2\n")]
    assert add.heredocs[0].content == "x\n"


def test_heredoc_with_fd_prefix() -> None:
    (run,) = steps("FROM a\nRUN cat 3<<EOF\nx\nEOF\n")
    assert isinstance(run, RunInstruction) and run.heredocs[0].fd == 3


def test_unterminated_heredoc_reports_its_instruction_line() -> None:
    line, reason = error_line("FROM a\nRUN true\nRUN <<EOF\nno end\n")
    assert line == 3 and reason == "unterminated heredoc <<EOF"


@pytest.mark.parametrize("text", [
    "ENV A=<<EOF\n", "RUN echo '<<EOF'\n", "RUN cat<<EOF\n", "RUN echo <<<here\n", "LABEL a=<<b\n",
])
def test_not_heredocs(text: str) -> None:
    (instruction,) = steps("FROM a\n" + text)
    assert not getattr(instruction, "heredocs", ())


def test_onbuild_trigger_heredoc() -> None:
    (onbuild,) = steps("FROM a\nONBUILD RUN <<EOF\necho hi\nEOF\n")
    assert isinstance(onbuild, OnbuildInstruction)
    assert isinstance(onbuild.trigger, RunInstruction)
    assert onbuild.trigger.heredocs[0].content == "echo hi\n"


# --- forms and arguments -----------------------------------------------------------------------

@pytest.mark.parametrize(("text", "args", "is_json"), [
    ('RUN ["echo", "a b"]', ("echo", "a b"), True),
    ("RUN [ -f /x ] && echo", ("[ -f /x ] && echo",), False),
    ('RUN ["echo", 1]', ('["echo", 1]',), False),
    ("RUN ['echo']", ("['echo']",), False),
    ("CMD []", (), True),
    ('CMD ["a"] trailing', ('["a"] trailing',), False),
    ('ENTRYPOINT [ "/bin/x" ,"-v" ]', ("/bin/x", "-v"), True),
])
def test_exec_and_shell_forms(text: str, args: tuple[str, ...], is_json: bool) -> None:
    instruction = only(text)
    assert isinstance(instruction, RunInstruction | CmdInstruction | EntrypointInstruction)
    assert (instruction.args, instruction.json) == (args, is_json)


def test_run_flags() -> None:
    run = only("RUN --mount=type=cache,target=/c,id=pip,sharing=locked --mount=type=bind,"
               "from=build,source=/out,target=/in,ro --mount=type=secret,id=tok "
               "--network=host --security=insecure echo")
    assert isinstance(run, RunInstruction)
    cache, bind, secret = run.mounts
    assert (cache.type, cache.target, cache.option("id"), cache.option("sharing")) == (
        "cache", "/c", "pip", "locked")
    assert (bind.from_, bind.source, bind.target, bind.readonly) == ("build", "/out", "/in", True)
    assert (secret.type, secret.option("id")) == ("secret", "tok")
    assert (run.network, run.security, run.args) == ("host", "insecure", ("echo",))


def test_copy_flags_and_json_form() -> None:
    copy = only('COPY --from=build --chown=1:2 --chmod=644 --link --parents=false '
                '--exclude=*.md --exclude=tmp ["a b", "c", "/d/"]')
    assert isinstance(copy, CopyInstruction)
    assert (copy.from_, copy.chown, copy.chmod, copy.link, copy.parents) == (
        "build", "1:2", "644", True, False)
    assert copy.excludes == ("*.md", "tmp")
    assert (copy.sources, copy.dest, copy.json) == (("a b", "c"), "/d/", True)


def test_flag_values_may_be_quoted_and_double_dash_ends_flags() -> None:
    copy = only('COPY --chown="app user" -- --weird-name /dst')
    assert isinstance(copy, CopyInstruction)
    assert copy.chown == "app user" and copy.sources == ("--weird-name",)


def test_add_flags() -> None:
    add = only("ADD --checksum=sha256:abc --keep-git-dir=true --unpack=false https://x/y.tgz /")
    assert isinstance(add, AddInstruction)
    assert (add.checksum, add.keep_git_dir, add.unpack) == ("sha256:abc", True, False)


def test_from_forms() -> None:
    df = parse_dockerfile("FROM --platform=linux/arm64 a@sha256:00 AS One\nFROM one as two\n"
                          "FROM scratch\n")
    first, second, third = df.stages
    assert (first.name, first.base, first.platform) == ("one", "a@sha256:00", "linux/arm64")
    assert (second.name, second.base_stage) == ("two", 0)
    assert (third.name, third.base, third.base_stage) == (None, "scratch", None)
    assert isinstance(first.from_instruction, FromInstruction)


def test_from_later_stage_name_is_an_image() -> None:
    df = parse_dockerfile("FROM later AS first\nFROM alpine AS later\n")
    assert df.stages[0].base_stage is None


def test_from_expands_global_args_and_builtin_args() -> None:
    df = parse_dockerfile("ARG IMG=alpine\nARG TAG\n"
                          "FROM --platform=$BUILDPLATFORM ${IMG}:${TAG:-3}\n",
                          build_args={"TAG": "3.20"},
                          builtin_args={"BUILDPLATFORM": "linux/amd64"})
    stage = df.stages[0]
    assert (stage.base, stage.platform) == ("alpine:3.20", "linux/amd64")
    assert df.meta_args["IMG"] == "alpine" and isinstance(df.global_args[0], ArgInstruction)


def test_shell_and_healthcheck_values() -> None:
    shell = only('SHELL ["pwsh", "-Command"]')
    assert isinstance(shell, ShellInstruction) and shell.args == ("pwsh", "-Command")
    health = only("HEALTHCHECK --timeout=1h2m3.5s --start-period=0 CMD [\"true\"]")
    assert isinstance(health, HealthcheckInstruction)
    assert health.test == ("CMD", "true")
    assert health.timeout == 3_723_500_000_000 and health.start_period == 0


@pytest.mark.parametrize(("text", "ns"), [
    ("300ms", 300_000_000), ("1.5h", 5_400_000_000_000), ("2us", 2_000), ("2µs", 2_000),
    ("10ns", 10), ("-1s", -1_000_000_000), ("0", 0), ("1m0.5s", 60_500_000_000),
])
def test_go_durations(text: str, ns: int) -> None:
    assert parse_go_duration(text) == ns


@pytest.mark.parametrize("text", ["", "10", "1d", "s", "1.s5", "--1s"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(text)


def test_parse_instruction_for_onbuild_triggers() -> None:
    run = parse_instruction("RUN make install", line=7)
    assert isinstance(run, RunInstruction) and run.args == ("make install",) and run.line == 7
    with pytest.raises(DockerfileSyntaxError):
        parse_instruction("RUN a\nRUN b")


# --- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "fragment"), [
    ("FROOM a", "unknown instruction: FROOM"),
    ("RUN", "RUN requires at least one argument"),
    ("CMD --port 80", "unknown flag: --port"),
    ("RUN --mount=type=weird,target=/x true", "unsupported mount type"),
    ("RUN --mount=type=cache true", "requires a target"),
    ("RUN --network=bridge true", "--network=bridge"),
    ("COPY --from=a --from=b x y", "duplicate flag"),
    ("COPY --from x y", "missing a value on flag: --from"),
    ("COPY --link=yes x y", "expecting boolean value"),
    ("ADD --from=a x y", "unknown flag: --from"),
    ("COPY onlyone", "requires at least two arguments"),
    ("ENV", "requires at least one argument"),
    ("ENV ALONE", "must have two arguments"),
    ("ENV A=1 B", "can't find = in 'B'"),
    ("ENV =1", "names can not be blank"),
    ("LABEL", "requires at least one argument"),
    ("ARG =x", "names can not be blank"),
    ("EXPOSE", "requires at least one argument"),
    ('VOLUME [""]', "can not be an empty string"),
    ("WORKDIR", "requires exactly one argument"),
    ("SHELL /bin/sh -c", "requires the arguments to be in JSON form"),
    ("SHELL []", "requires at least one argument"),
    ("HEALTHCHECK", "unknown type"),
    ("HEALTHCHECK NONE x", "NONE takes no arguments"),
    ("HEALTHCHECK --interval=5s NONE", "NONE takes no arguments"),
    ("HEALTHCHECK CHECK x", "unknown type 'CHECK'"),
    ("HEALTHCHECK CMD", "missing a command"),
    ("HEALTHCHECK --interval=10 CMD x", "--interval"),
    ("HEALTHCHECK --timeout=500us CMD x", "cannot be less than 1ms"),
    ("HEALTHCHECK --retries=-1 CMD x", "cannot be negative"),
    ("HEALTHCHECK --retries=two CMD x", "must be an integer"),
    ("HEALTHCHECK --bogus=1 CMD x", "unknown flag"),
    ("ONBUILD", "requires at least one argument"),
    ("ONBUILD ONBUILD RUN x", "chaining"),
    ("ONBUILD FROM x", "FROM isn't allowed as an ONBUILD trigger"),
    ("ONBUILD MAINTAINER x", "MAINTAINER isn't allowed"),
    ("ONBUILD BOGUS x", "unknown instruction: BOGUS"),
    ("FROM a b", "one or three arguments"),
    ("FROM a AS", "one or three arguments"),
    ("FROM a IS b", "one or three arguments"),
    ("FROM a AS 1st", "invalid stage name"),
    ("FROM a AS st@ge", "invalid stage name"),
    ("FROM ${NOPE}", "should not be blank"),
    ("FROM ${NOPE", "missing '}'"),
])
def test_errors_carry_the_instruction_line(body: str, fragment: str) -> None:
    text = "FROM base AS s0\nRUN a \\\n  b\n" + body + "\nRUN after\n"
    line, reason = error_line(text)
    assert line == 4
    assert fragment in reason


def test_structural_errors() -> None:
    assert error_line("") == (0, "the Dockerfile has no instructions")
    assert error_line("# just a comment\n\n")[1] == "the Dockerfile has no instructions"
    assert error_line("ARG A=1\n") == (1, "the Dockerfile has no FROM instruction")
    line, reason = error_line("ARG A\nRUN echo\nFROM a\n")
    assert line == 2 and "RUN is not allowed before the first FROM" in reason
    line, reason = error_line("FROM a AS x\nFROM b AS X\n")
    assert line == 2 and "duplicate stage name 'x'" in reason
