"""Docker's small shell-word language: variable substitution and quote removal.

This is the subset of POSIX shell that Dockerfile instructions other than RUN, CMD and
ENTRYPOINT understand (BuildKit ``frontend/dockerfile/shell``):

- ``$VAR`` and ``${VAR}``; unset variables expand to the empty string;
- ``${VAR:-word}`` / ``${VAR-word}``: *word* if VAR is unset (or, with ``:``, empty);
- ``${VAR:+word}`` / ``${VAR+word}``: *word* if VAR is set (and, with ``:``, non-empty);
- ``${VAR:?msg}`` / ``${VAR?msg}``: an error if VAR is unset (or empty);
- ``${VAR#pat}``, ``${VAR##pat}``, ``${VAR%pat}``, ``${VAR%%pat}``, ``${VAR/pat/rep}``,
  ``${VAR//pat/rep}`` with shell glob patterns;
- single quotes (literal), double quotes (expansion inside, escape only ``"``, ``$`` and the
  escape character), the escape character (``\\`` or the ``# escape=`` one) outside quotes.

Words are expanded one at a time (``expand_word``); ``split_words`` cuts an instruction's
arguments into words while keeping quotes and escapes for the later expansion.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

from sandbox.build._errors import ExpansionError

__all__ = ["expand_word", "expand_heredoc", "split_words", "unquote"]

_SPECIAL_PARAMS = "@*#?-$!0"


class _Lexer:
    """One pass over one word; ``keep_quotes`` is the heredoc mode (quotes are plain text)."""

    def __init__(self, text: str, env: Mapping[str, str], escape: str, *,
                 keep_quotes: bool = False, raw_quotes: bool = False,
                 substitute: bool = True) -> None:
        self.text = text
        self.pos = 0
        self.env = env
        self.escape = escape
        self.keep_quotes = keep_quotes
        self.raw_quotes = raw_quotes
        self.substitute = substitute

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def next(self) -> str:
        ch = self.peek()
        self.pos += 1 if ch else 0
        return ch

    def word(self) -> str:
        value, _ = self.until("", raw_escapes=False)
        return value

    def until(self, stops: str, *, raw_escapes: bool) -> tuple[str, bool]:
        """Read up to (and consume) one of ``stops``; returns (text, found)."""
        out: list[str] = []
        while (ch := self.peek()) != "":
            if stops and ch in stops:
                self.next()
                return "".join(out), True
            if ch == "$" and self.substitute:
                out.append(self.dollar())
            elif ch == "'" and not self.keep_quotes:
                out.append(self.single_quote())
            elif ch == '"' and not self.keep_quotes:
                out.append(self.double_quote())
            elif ch == self.escape:
                self.next()
                nxt = self.peek()
                if self.keep_quotes:
                    # heredoc bodies follow the shell's heredoc rule: only $ and the escape
                    # character itself are escapable, every other backslash stays.
                    if nxt in ("$", self.escape):
                        out.append(self.next())
                    else:
                        out.append(ch)
                    continue
                if raw_escapes:
                    out.append(ch)
                if nxt == "":
                    break
                out.append(self.next())
            else:
                out.append(self.next())
        return "".join(out), False

    def single_quote(self) -> str:
        self.next()
        out: list[str] = ["'"] if self.raw_quotes else []
        while True:
            ch = self.next()
            if ch == "":
                raise ExpansionError(
                    "unexpected end of statement while looking for matching single-quote")
            if ch == "'":
                break
            out.append(ch)
        if self.raw_quotes:
            out.append("'")
        return "".join(out)

    def double_quote(self) -> str:
        self.next()
        out: list[str] = ['"'] if self.raw_quotes else []
        while True:
            ch = self.peek()
            if ch == "":
                raise ExpansionError(
                    "unexpected end of statement while looking for matching double-quote")
            if ch == '"':
                self.next()
                break
            if ch == "$" and self.substitute:
                out.append(self.dollar())
                continue
            self.next()
            if ch == self.escape:
                nxt = self.peek()
                if nxt == "":
                    continue
                if nxt in ('"', "$", self.escape):
                    ch = self.next()
            out.append(ch)
        if self.raw_quotes:
            out.append('"')
        return "".join(out)

    def name(self) -> str:
        ch = self.peek()
        if ch.isdigit():
            start = self.pos
            while self.peek().isdigit():
                self.next()
            return self.text[start:self.pos]
        if ch and ch in _SPECIAL_PARAMS:
            return self.next()
        start = self.pos
        while (ch := self.peek()) and (ch.isalnum() or ch == "_"):
            self.next()
        return self.text[start:self.pos]

    def dollar(self) -> str:
        self.next()
        if self.peek() != "{":
            name = self.name()
            return self.env.get(name, "") if name else "$"
        self.next()
        if self.peek() == "":
            raise ExpansionError("syntax error: missing '}'")
        if self.peek() in "{}:":
            raise ExpansionError("syntax error: bad substitution")
        name = self.name()
        op = self.next()
        if op == "}":
            return self.env.get(name, "")
        if op == "":
            raise ExpansionError("syntax error: missing '}'")
        null_is_unset = op == ":"
        if null_is_unset:
            op = self.next()
            if op not in ("-", "+", "?"):
                raise ExpansionError(f"unsupported modifier (:{op}) in substitution")
        if op == "/":
            return self.replace(name)
        if op not in ("-", "+", "?", "#", "%"):
            raise ExpansionError(f"unsupported modifier ({op}) in substitution")
        word, found = self.until("}", raw_escapes=op in "#%")
        if not found:
            raise ExpansionError("syntax error: missing '}'")
        return self.modify(name, op, word, null_is_unset)

    def modify(self, name: str, op: str, word: str, null_is_unset: bool) -> str:
        is_set = name in self.env
        value = self.env.get(name, "")
        missing = not is_set or (null_is_unset and value == "")
        if op == "-":
            return word if missing else value
        if op == "+":
            return "" if missing else word
        if op == "?":
            if not is_set:
                raise ExpansionError(f"{name}: {word or 'is not allowed to be unset'}")
            if missing:
                raise ExpansionError(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        greedy = word.startswith(op)
        pattern = word[1:] if greedy else word
        if op == "#":
            return _trim_prefix(value, pattern, greedy)
        return _trim_suffix(value, pattern, greedy)

    def replace(self, name: str) -> str:
        replace_all = self.peek() == "/"
        if replace_all:
            self.next()
        pattern, found = self.until("/}", raw_escapes=True)
        replacement = ""
        if found and self.text[self.pos - 1] == "/":
            replacement, found = self.until("}", raw_escapes=False)
        if not found:
            raise ExpansionError("syntax error: missing '}'")
        return _replace(self.env.get(name, ""), pattern, replacement, replace_all)


@functools.lru_cache(maxsize=64)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A shell pattern (``*``, ``?``, ``[...]``, ``\\x``) as an anchored regex."""
    out: list[str] = []
    pos = 0
    while pos < len(pattern):
        ch = pattern[pos]
        pos += 1
        if ch == "\\" and pos < len(pattern):
            out.append(re.escape(pattern[pos]))
            pos += 1
        elif ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "[" and "]" in pattern[pos + 1:]:
            end = pattern.index("]", pos + 1)
            body = pattern[pos:end]
            negate = body[:1] in ("!", "^")
            members = re.escape(body[1:] if negate else body).replace("\\-", "-")
            out.append(("[^" if negate else "[") + members + "]")
            pos = end + 1
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def _glob(text: str, pattern: str) -> bool:
    return _glob_regex(pattern).fullmatch(text) is not None


def _trim_prefix(value: str, pattern: str, greedy: bool) -> str:
    cuts = range(len(value), -1, -1) if greedy else range(len(value) + 1)
    for i in cuts:
        if _glob(value[:i], pattern):
            return value[i:]
    return value


def _trim_suffix(value: str, pattern: str, greedy: bool) -> str:
    cuts = range(len(value) + 1) if greedy else range(len(value), -1, -1)
    for i in cuts:
        if _glob(value[i:], pattern):
            return value[:i]
    return value


def _replace(value: str, pattern: str, replacement: str, replace_all: bool) -> str:
    out: list[str] = []
    i = 0
    replaced = False
    while i < len(value) and (replace_all or not replaced):
        end = next((j for j in range(len(value), i, -1) if _glob(value[i:j], pattern)), None)
        if end is None:
            out.append(value[i])
            i += 1
            continue
        out.append(replacement)
        i = end
        replaced = True
    out.append(value[i:])
    return "".join(out)


def expand_word(word: str, env: Mapping[str, str], *, escape: str = "\\") -> str:
    """Expand one Dockerfile word: substitute variables and remove quotes and escapes.

    Raises `ExpansionError` (without a line; callers add it) on malformed input.
    """
    return _Lexer(word, env, escape).word()


def expand_heredoc(text: str, env: Mapping[str, str], *, escape: str = "\\") -> str:
    """Expand variables in a heredoc body whose delimiter was unquoted; quotes stay as text."""
    return _Lexer(text, env, escape, keep_quotes=True).word()


def unquote(word: str, *, escape: str = "\\") -> str:
    """Remove quotes and escapes from ``word`` without substituting anything."""
    return _Lexer(word, {}, escape, substitute=False).word()


def split_words(rest: str, *, escape: str = "\\") -> list[str]:
    """Split on blanks outside quotes, keeping quotes and escapes (BuildKit ``parseWords``)."""
    words: list[str] = []
    word: list[str] = []
    quote = ""
    i = 0
    while i < len(rest):
        ch = rest[i]
        if not quote and ch in " \t\r\n\f\v":
            if word:
                words.append("".join(word))
                word = []
            i += 1
            continue
        if ch == escape and quote != "'":
            if i + 1 == len(rest):
                break
            word.append(ch + rest[i + 1])
            i += 2
            continue
        if quote and ch == quote:
            quote = ""
        elif not quote and ch in "'\"":
            quote = ch
        word.append(ch)
        i += 1
    if word:
        words.append("".join(word))
    return words

