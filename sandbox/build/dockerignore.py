"""``.dockerignore``: Docker's pattern rules (moby ``patternmatcher`` and ``ignorefile``).

- One pattern a line; a line starting with ``#`` is a comment; blanks around are trimmed.
- Patterns are cleaned like Go's ``filepath.Clean`` and one leading ``/`` is dropped, so
  ``/a/./b/`` is ``a/b``; they are matched against the path relative to the context.
- ``*`` and ``?`` do not cross ``/``; ``**`` matches any number of directories (also none);
  ``[...]``/``[^...]`` are character classes; ``\\`` escapes the next character.
- A pattern also matches everything under a directory it matches (``docs`` excludes
  ``docs/a.md``); ``!pattern`` re-includes, and the last matching pattern wins, so a child
  of an excluded directory can be re-included and is still sent.
- The Dockerfile and ``.dockerignore`` are always sent.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sandbox.build._errors import IgnoreFileError
from sandbox.store import read_text

__all__ = ["IgnorePattern", "Matcher", "read_ignore_patterns", "load_dockerignore",
           "iter_context", "clean_path"]

_REGEX_ESCAPED = set(".+()|{}$")


def clean_path(path: str) -> str:
    """Go's ``path.Clean``: collapse ``//``, ``.``, ``..``; drop a trailing ``/``."""
    if not path:
        return "."
    rooted = path.startswith("/")
    parts: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(segment)
    body = "/".join(parts)
    if rooted:
        return "/" + body
    return body or "."


def _escaped_char(pattern: str, pos: int) -> tuple[str, int]:
    """One class member at ``pos`` (Go ``getEsc``); raises ValueError on bad syntax."""
    if pos >= len(pattern) or pattern[pos] in "-]":
        raise ValueError("bad pattern")
    if pattern[pos] == "\\":
        pos += 1
        if pos >= len(pattern):
            raise ValueError("bad pattern")
    return pattern[pos], pos + 1


def _char_class(pattern: str, pos: int) -> tuple[str, int]:
    """Translate ``[...]`` starting after the ``[``; returns (regex, position after ``]``)."""
    out = ["["]
    if pos < len(pattern) and pattern[pos] == "^":
        out.append("^")
        pos += 1
    ranges = 0
    while True:
        if pos < len(pattern) and pattern[pos] == "]" and ranges > 0:
            out.append("]")
            return "".join(out), pos + 1
        low, pos = _escaped_char(pattern, pos)
        out.append(re.escape(low))
        if pos < len(pattern) and pattern[pos] == "-":
            high, pos = _escaped_char(pattern, pos + 1)
            out.append("-" + re.escape(high))
        ranges += 1


@dataclass(frozen=True)
class IgnorePattern:
    """One compiled pattern; ``kind`` is exact, prefix, suffix or regexp as in moby."""

    text: str
    exclusion: bool
    kind: str
    regex: re.Pattern[str] | None

    @classmethod
    def compile(cls, text: str, exclusion: bool) -> IgnorePattern:
        regex = ["^"]
        kind = "exact"
        pos = 0
        step = 0
        while pos < len(text):
            ch = text[pos]
            pos += 1
            if ch == "*" and text[pos:pos + 1] == "*":
                pos += 1
                if text[pos:pos + 1] == "/":
                    pos += 1
                if pos >= len(text):
                    if kind == "exact":
                        kind = "prefix"
                    else:
                        regex.append(".*")
                        kind = "regexp"
                else:
                    regex.append("(.*/)?")
                    kind = "regexp"
                if step == 0:
                    kind = "suffix"
            elif ch == "*":
                regex.append("[^/]*")
                kind = "regexp"
            elif ch == "?":
                regex.append("[^/]")
                kind = "regexp"
            elif ch in _REGEX_ESCAPED:
                regex.append("\\" + ch)
            elif ch == "\\":
                if pos < len(text):
                    regex.append(re.escape(text[pos]))
                    pos += 1
                    kind = "regexp"
                else:
                    regex.append("\\\\")
            elif ch == "[":
                part, pos = _char_class(text, pos)
                regex.append(part)
                kind = "regexp"
            else:
                regex.append(re.escape(ch))
            step += 1
        compiled = re.compile("".join(regex) + "$", re.DOTALL) if kind == "regexp" else None
        return cls(text=text, exclusion=exclusion, kind=kind, regex=compiled)

    def match(self, path: str) -> bool:
        if self.kind == "exact":
            return path == self.text
        if self.kind == "prefix":
            return path.startswith(self.text[:-2])
        if self.kind == "suffix":
            suffix = self.text[2:]
            return path.endswith(suffix) or (suffix[:1] == "/" and path == suffix[1:])
        assert self.regex is not None
        return self.regex.match(path) is not None


def _validate(pattern: str) -> None:
    """Reject what Go's ``filepath.Match`` calls ``ErrBadPattern``."""
    pos = 0
    while pos < len(pattern):
        ch = pattern[pos]
        pos += 1
        if ch == "\\":
            if pos >= len(pattern):
                raise ValueError("bad pattern")
            pos += 1
        elif ch == "[":
            _, pos = _char_class(pattern, pos)


class Matcher:
    """Ordered patterns; `matches` says whether a context path is excluded."""

    def __init__(self, patterns: Iterable[str] = (), *,
                 always_include: Iterable[str] = ()) -> None:
        compiled: list[IgnorePattern] = []
        for raw in patterns:
            text = raw.strip()
            if not text:
                continue
            text = clean_path(text)
            exclusion = text.startswith("!")
            if exclusion:
                if len(text) == 1:
                    raise IgnoreFileError('illegal exclusion pattern: "!"',
                                          hint="write the path to re-include after the !")
                text = text[1:]
            try:
                _validate(text)
            except ValueError:
                raise IgnoreFileError(f"invalid .dockerignore pattern {raw.strip()!r}",
                                      hint="check the [ ] classes and trailing \\") from None
            compiled.append(IgnorePattern.compile(text, exclusion))
        self.patterns: tuple[IgnorePattern, ...] = tuple(compiled)
        self.has_exclusions = any(p.exclusion for p in compiled)
        self.always_include = frozenset(clean_path(p).lstrip("/") for p in always_include)

    def matches(self, relpath: str) -> bool:
        """True if ``relpath`` (slash-separated, relative to the context) is excluded.

        A pattern matches a path or any of its parent directories (moby
        ``MatchesOrParentMatches``); the last matching pattern decides.
        """
        path = clean_path(relpath).lstrip("/")
        if path in (".", "") or path in self.always_include:
            return False
        parts = path.split("/")
        parents = ["/".join(parts[: i + 1]) for i in range(len(parts) - 1)]
        matched = False
        for pattern in self.patterns:
            if pattern.exclusion != matched:
                continue
            if pattern.match(path) or any(pattern.match(parent) for parent in parents):
                matched = not pattern.exclusion
        return matched


def read_ignore_patterns(text: str) -> list[str]:
    """The patterns of an ignore file (moby ``ignorefile.ReadAll``), cleaned, in order."""
    if text.startswith("\ufeff"):
        text = text[1:]
    patterns: list[str] = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        pattern = line.strip()
        if not pattern:
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = clean_path(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        patterns.append("!" + pattern if invert else pattern)
    return patterns


def load_dockerignore(context_dir: str | os.PathLike[str], *,
                      dockerfile: str = "Dockerfile") -> Matcher:
    """The matcher for a context: ``<dockerfile>.dockerignore`` if present, else
    ``.dockerignore``, else nothing excluded. ``dockerfile`` is the Dockerfile's path relative
    to the context; it and the ignore file are always sent."""
    context = Path(context_dir)
    candidates = [context / f"{dockerfile}.dockerignore", context / ".dockerignore"]
    patterns: list[str] = []
    for candidate in candidates:
        if candidate.is_file():
            patterns = read_ignore_patterns(read_text(str(candidate), "ignore file"))
            break
    return Matcher(patterns, always_include=(dockerfile, ".dockerignore"))


def _walk(root: Path, rel: str, matcher: Matcher, pending: list[str]) -> Iterator[str]:
    try:
        entries = sorted(os.scandir(root / rel if rel else root), key=lambda e: e.name)
    except FileNotFoundError:
        return
    for entry in entries:
        path = f"{rel}/{entry.name}" if rel else entry.name
        excluded = matcher.matches(path)
        is_dir = entry.is_dir(follow_symlinks=False)
        if not excluded:
            yield from pending
            pending.clear()
            yield path
        if is_dir and (not excluded or matcher.has_exclusions):
            depth = len(pending)
            if excluded:
                pending.append(path)
            yield from _walk(root, path, matcher, pending)
            del pending[depth:]


def iter_context(context_dir: str | os.PathLike[str], matcher: Matcher) -> Iterator[str]:
    """Relative paths (slash-separated, sorted depth-first) of the entries sent to the build.

    Symlinks are listed, not followed. An excluded directory is walked when some ``!`` pattern
    may re-include a child; it is then listed (just before its first included child) only if
    a child is included, as Docker creates the parents of what it sends.
    """
    yield from _walk(Path(context_dir), "", matcher, [])

