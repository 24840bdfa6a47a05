"""Dockerfile front end: parser, variable expansion, build state and build-context rules.

The builder (``sandbox.build.builder``) drives it::

    dockerfile = parse_dockerfile(text, build_args=args, builtin_args=platform_args)
    for stage in resolve_target(dockerfile, target):
        state = BuildState.for_stage(dockerfile, stage, env=base_config_env)
        for raw in stage.instructions:
            step = state.step(raw)   # words expanded with the state before it; state updated
            ...
"""

from sandbox.build._errors import DockerfileSyntaxError, ExpansionError, IgnoreFileError
from sandbox.build.commands import parse_go_duration, parse_mount
from sandbox.build.dockerignore import (
    IgnorePattern,
    Matcher,
    clean_path,
    iter_context,
    load_dockerignore,
    read_ignore_patterns,
)
from sandbox.build.graph import resolve_target, stage_dependencies, unused_build_args
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
    expand_instruction,
)
from sandbox.build.parser import Dockerfile, Stage, parse_dockerfile, parse_instruction
from sandbox.build.shell import expand_heredoc, expand_word, split_words, unquote
from sandbox.build.state import (
    DEFAULT_SHELL,
    PROXY_ARGS,
    BuildState,
    RunCommand,
    command_argv,
    parse_signal,
    port_specs,
    run_command,
)

__all__ = [
    "DockerfileSyntaxError", "ExpansionError", "IgnoreFileError",
    "parse_dockerfile", "parse_instruction", "Dockerfile", "Stage",
    "resolve_target", "stage_dependencies", "unused_build_args",
    "BuildState", "RunCommand", "run_command", "command_argv", "port_specs", "parse_signal",
    "PROXY_ARGS", "DEFAULT_SHELL",
    "expand_word", "expand_heredoc", "split_words", "unquote", "expand_instruction",
    "parse_go_duration", "parse_mount",
    "Instruction", "Heredoc", "KeyValue", "ArgDecl", "RunMount",
    "FromInstruction", "RunInstruction", "CmdInstruction", "EntrypointInstruction",
    "ShellInstruction", "EnvInstruction", "LabelInstruction", "ArgInstruction",
    "CopyInstruction", "AddInstruction", "WorkdirInstruction", "UserInstruction",
    "ExposeInstruction", "VolumeInstruction", "StopSignalInstruction",
    "HealthcheckInstruction", "OnbuildInstruction", "MaintainerInstruction",
    "IgnorePattern", "Matcher", "clean_path", "iter_context", "load_dockerignore",
    "read_ignore_patterns",
]
