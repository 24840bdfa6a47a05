"""The one exception hierarchy of the engine.

Library code raises these; only the CLI (``sandbox.cli``) and the pytest plugin render them.
Every message is one line that says what went wrong and, through ``hint``, what to do.
Exit codes follow Docker: 125 engine error, 126 cannot execute, 127 not found.
"""

from __future__ import annotations

__all__ = [
    "SandboxError",
    "UsageError",
    "InvalidReference",
    "ImageNotFound",
    "ContainerNotFound",
    "RegistryError",
    "DigestMismatch",
    "StoreLocked",
    "StoreError",
    "UnsafeLayerMember",
    "AbsoluteLinkError",
    "OutsideDestinationError",
    "SpecialFileError",
    "SpecError",
    "UserNamespaceUnavailable",
    "RuntimeSetupError",
    "CommandNotFound",
    "CommandNotExecutable",
    "InvalidStateTransition",
    "BuildError",
]


class SandboxError(Exception):
    """Base of every error the engine reports to a user."""

    exit_code: int = 125

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __reduce__(self) -> tuple[object, ...]:
        """Pickle with every attribute (hint, member...): errors cross the user-namespace
        helper's pipe, and keyword-only constructors cannot be rebuilt from ``args`` alone."""
        return (_restore_error, (type(self), self.args, dict(self.__dict__)))

    def one_line(self) -> str:
        """The message and hint as the single line the front ends print."""
        text = " ".join(self.message.split())
        if self.hint:
            text = f"{text} ({' '.join(self.hint.split())})"
        return text


def _restore_error(cls: type[SandboxError], args: tuple[object, ...],
                   state: dict[str, object]) -> SandboxError:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class UsageError(SandboxError):
    """Bad command-line input (unknown flag, bad value)."""


class SpecError(SandboxError):
    """A container spec (or the flags it came from) is invalid."""


class InvalidReference(SandboxError):
    """An image reference does not parse."""


class ImageNotFound(SandboxError):
    """No image of that name or id in the store."""


class ContainerNotFound(SandboxError):
    """No container of that name or id."""


class RegistryError(SandboxError):
    """A registry refused or failed a request."""


class DigestMismatch(SandboxError):
    """Content did not hash to the digest it was announced with."""


class StoreError(SandboxError):
    """The on-disk store is unusable (permissions, corruption, version)."""


class StoreLocked(StoreError):
    """Another process holds a lock we could not wait for."""


class UnsafeLayerMember(SandboxError):
    """A layer tar member would escape its destination or is otherwise refused."""

    def __init__(self, message: str, *, member: str, target: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.member = member
        self.target = target


class AbsoluteLinkError(UnsafeLayerMember):
    """A hard link names an absolute path."""


class OutsideDestinationError(UnsafeLayerMember):
    """A member or link target resolves outside the destination."""


class SpecialFileError(UnsafeLayerMember):
    """A member has a type or header we refuse."""


class UserNamespaceUnavailable(SandboxError):
    """The kernel or policy refuses unprivileged user namespaces."""


class RuntimeSetupError(SandboxError):
    """A step of container setup failed (mount, pivot_root, ...)."""

    def __init__(self, op: str, path: str, errno_: int, *, flags: str = "",
                 hint: str | None = None) -> None:
        import os

        detail = f" ({flags})" if flags else ""
        super().__init__(f"{op} {path}{detail}: {os.strerror(errno_)}", hint=hint)
        self.op = op
        self.path = path
        self.flags = flags
        self.errno = errno_


class CommandNotFound(SandboxError):
    """The container's command does not exist."""

    exit_code = 127


class CommandNotExecutable(SandboxError):
    """The container's command exists but cannot be executed."""

    exit_code = 126


class InvalidStateTransition(SandboxError):
    """A lifecycle operation does not apply to the container's current state."""

    def __init__(self, from_: str, to: str, *, name: str = "") -> None:
        who = f"container {name} " if name else ""
        super().__init__(f"cannot {to} {who}in state {from_}")
        self.from_ = from_
        self.to = to


class BuildError(SandboxError):
    """A Dockerfile could not be built."""
