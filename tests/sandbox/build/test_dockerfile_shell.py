"""Variable substitution and quoting, after BuildKit's shell lexer (envVarTest cases)."""

from __future__ import annotations

import pytest

from sandbox.build import (
    DockerfileSyntaxError,
    ExpansionError,
    expand_heredoc,
    expand_word,
    split_words,
    unquote,
)
from sandbox.errors import BuildError

ENV = {"PWD": "/home", "SHELL": "bash", "KOREAN": "한국어", "EMPTY": "", "P": "a/b/c.tar.gz"}


@pytest.mark.parametrize(("word", "expected"), [
    ("hello", "hello"),
    ("he'll'o", "hello"),
    ('he"ll"o', "hello"),
    ("$PWD", "/home"),
    ("${PWD}", "/home"),
    ("${PWD}/x", "/home/x"),
    ("$PWD/x", "/home/x"),
    ("'$PWD'", "$PWD"),
    ('"$PWD"', "/home"),
    ('"${PWD}"', "/home"),
    ("\\$PWD", "$PWD"),
    ("\\${PWD}", "${PWD}"),
    ('"\\$PWD"', "$PWD"),
    ("$UNSET", ""),
    ("x${UNSET}y", "xy"),
    ("$", "$"),
    ("a$", "a$"),
    ("$ x", "$ x"),
    ("$KOREAN", "한국어"),
    ("${KOREAN}x", "한국어x"),
    ("$PWD$SHELL", "/homebash"),
    ("$1", ""),
    ("$12x", "x"),
    ("a\\ b", "a b"),
    ("a\\\\b", "a\\b"),
    ('"a\\nb"', "a\\nb"),
    ('"a\\"b"', 'a"b'),
    ("'a\\b'", "a\\b"),
    ('"\'"', "'"),
    ("'\"'", '"'),
    ("trailing\\", "trailing"),
])
def test_plain_substitution_and_quotes(word: str, expected: str) -> None:
    assert expand_word(word, ENV) == expected


@pytest.mark.parametrize(("word", "expected"), [
    ("${UNSET:-default}", "default"),
    ("${EMPTY:-default}", "default"),
    ("${PWD:-default}", "/home"),
    ("${UNSET-default}", "default"),
    ("${EMPTY-default}", ""),
    ("${UNSET:+alt}", ""),
    ("${EMPTY:+alt}", ""),
    ("${PWD:+alt}", "alt"),
    ("${UNSET+alt}", ""),
    ("${EMPTY+alt}", "alt"),
    ("${UNSET:-$PWD}", "/home"),
    ("${UNSET:-${SHELL:-x}}", "bash"),
    ('${UNSET:-"a b"}', "a b"),
    ("${UNSET:-'$PWD'}", "$PWD"),
    ('"${UNSET:-a b}"', "a b"),
    ("${PWD:?must be set}", "/home"),
    ("${P#*/}", "b/c.tar.gz"),
    ("${P##*/}", "c.tar.gz"),
    ("${P%.*}", "a/b/c.tar"),
    ("${P%%.*}", "a/b/c"),
    ("${P#nomatch}", "a/b/c.tar.gz"),
    ("${P/\\//-}", "a-b/c.tar.gz"),
    ("${P//\\//-}", "a-b-c.tar.gz"),
    ("${P/b}", "a//c.tar.gz"),
])
def test_modifiers(word: str, expected: str) -> None:
    assert expand_word(word, ENV) == expected


@pytest.mark.parametrize(("word", "message"), [
    ("${UNSET:?}", "UNSET: is not allowed to be unset"),
    ("${EMPTY:?}", "EMPTY: is not allowed to be empty"),
    ("${UNSET?custom message}", "UNSET: custom message"),
    ("${PWD", "missing '}'"),
    ("${PWD:-x", "missing '}'"),
    ("${", "missing '}'"),
    ("${}", "bad substitution"),
    ("${:-x}", "bad substitution"),
    ("${PWD:=x}", "unsupported modifier"),
    ("${PWD^}", "unsupported modifier"),
    ("'unterminated", "matching single-quote"),
    ('"unterminated', "matching double-quote"),
])
def test_errors(word: str, message: str) -> None:
    with pytest.raises(ExpansionError, match=message.replace("?", r"\?")) as info:
        expand_word(word, ENV)
    assert isinstance(info.value, DockerfileSyntaxError)
    assert isinstance(info.value, BuildError)


def test_empty_value_with_question_without_colon_is_fine() -> None:
    assert expand_word("${EMPTY?}", ENV) == ""


def test_backtick_escape() -> None:
    assert expand_word("c:\\dir", ENV, escape="`") == "c:\\dir"
    assert expand_word("`$PWD", ENV, escape="`") == "$PWD"
    assert expand_word('"a`"b"', ENV, escape="`") == 'a"b'


def test_heredoc_expansion_keeps_quotes_and_other_backslashes() -> None:
    body = "echo \"$PWD\" '$SHELL' \\$HOME printf 'a\\n'\n"
    assert expand_heredoc(body, ENV) == "echo \"/home\" 'bash' $HOME printf 'a\\n'\n"


def test_split_words_keeps_quotes_and_escapes() -> None:
    assert split_words("a=\"x y\"  b='c d' e\\ f  ") == ['a="x y"', "b='c d'", "e\\ f"]
    assert split_words("a`  b", escape="`") == ["a` ", "b"]
    assert split_words("") == []


def test_unquote_does_not_substitute() -> None:
    assert unquote("'EOF'") == "EOF"
    assert unquote('"$X"') == "$X"
