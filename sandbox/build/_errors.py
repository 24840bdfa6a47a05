"""Errors of the Dockerfile front end, all `BuildError`s that know their Dockerfile line."""

from __future__ import annotations

from sandbox.errors import BuildError

__all__ = ["DockerfileSyntaxError", "ExpansionError", "IgnoreFileError"]


class DockerfileSyntaxError(BuildError):
    """The Dockerfile does not parse; ``line`` is its 1-based line number (0 when unknown)."""

    def __init__(self, message: str, *, line: int = 0, hint: str | None = None) -> None:
        text = f"Dockerfile:{line}: {message}" if line else message
        super().__init__(text, hint=hint)
        self.line = line
        self.reason = message


class ExpansionError(DockerfileSyntaxError):
    """A ``$VAR`` substitution is malformed or failed (``${X:?msg}``, ``${X``, ``${}``)."""


class IgnoreFileError(BuildError):
    """A ``.dockerignore`` pattern is invalid."""
