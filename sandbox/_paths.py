"""Path joins that cannot escape a root (runc ``securejoin``/``pathrs`` in Python)."""

from __future__ import annotations

import errno
import os

__all__ = ["resolve_in_root", "clean_container_path"]

_MAX_LINKS = 40


def clean_container_path(path: str) -> str:
    """Normalise an absolute container path lexically (``..`` clamps at ``/``)."""
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/" + "/".join(parts)


def resolve_in_root(root: str, path: str, *, follow_last: bool = True) -> str:
    """The host path of container path ``path`` under ``root``, following symlinks as if
    ``root`` were ``/``: absolute link targets restart at ``root`` and ``..`` never leaves it.

    Components that do not exist are appended as they are (the caller creates them).
    """
    root = os.path.abspath(root)
    pending = [p for p in path.split("/") if p not in ("", ".")]
    pending.reverse()
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        is_last = not pending
        if is_last and not follow_last:
            resolved.append(part)
            break
        try:
            target = os.readlink(candidate)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT, errno.ENOTDIR):
                resolved.append(part)
                continue
            raise
        links += 1
        if links > _MAX_LINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
        if target.startswith("/"):
            resolved = []
        parts = [p for p in target.split("/") if p not in ("", ".")]
        pending.extend(reversed(parts))
    return os.path.join(root, *resolved)
