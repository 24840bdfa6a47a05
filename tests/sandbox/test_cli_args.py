"""The command-line parser's pflag rules (``sandbox.cli._args``)."""

from __future__ import annotations

import pytest

from sandbox.cli._args import Parser
from sandbox.errors import SandboxError


def _parser() -> Parser:
    p = Parser("t", "test")
    p.add_argument("-H", "--human", action="store_true", default=True)
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("-e", "--env", action="append", default=[])
    p.add_argument("image")
    return p


@pytest.mark.parametrize(("argv", "human", "quiet"), [
    (["img"], True, False),
    (["-H", "img"], True, False),            # a boolean takes no value: img stays positional
    (["-H=false", "img"], False, False),
    (["--human=false", "img"], False, False),
    (["-H=0", "-q=true", "img"], False, True),
    (["-qH=f", "img"], False, True),
])
def test_boolean_flags_take_pflags_values(argv: list[str], human: bool, quiet: bool) -> None:
    ns = _parser().parse_args(argv)
    assert (ns.human, ns.quiet, ns.image) == (human, quiet, "img")


def test_short_flags_take_equals_values() -> None:
    ns = _parser().parse_args(["-e=A=1", "-eB=2", "-e", "C=3", "img"])
    assert ns.env == ["A=1", "B=2", "C=3"]


@pytest.mark.parametrize("argv", [["-H=maybe", "img"], ["--human=yes", "img"]])
def test_a_bad_boolean_value_is_one_line(argv: list[str]) -> None:
    with pytest.raises(SandboxError, match='invalid argument ".*" for "-(H|-human)" flag'):
        _parser().parse_args(argv)
