"""``RUN --mount``: ``cache`` (a directory kept in the store across builds), ``tmpfs`` and
``bind`` (read-only by default) of a context path. Secrets, ssh agents and binds from other
stages are refused with a message."""

from __future__ import annotations

import hashlib
import os
import posixpath
from typing import TYPE_CHECKING, Any

from sandbox._paths import resolve_in_root
from sandbox.build.instructions import RunInstruction, RunMount
from sandbox.errors import BuildError
from sandbox.spec import Mount

if TYPE_CHECKING:
    from sandbox.build.builder import Builder

__all__ = ["run_mounts"]


def _target(mount: RunMount, workdir: str) -> str:
    if not mount.target:
        raise BuildError(f"RUN --mount=type={mount.type} needs a target",
                         hint="add target=/path")
    return posixpath.normpath(posixpath.join(workdir or "/", mount.target))


def _one(builder: Builder, mount: RunMount, workdir: str) -> Mount:
    target = _target(mount, workdir)
    if mount.type == "tmpfs":
        size = mount.option("size")
        return Mount(target=target, type="tmpfs", options=(f"size={size}",) if size else ())
    if mount.type == "cache":
        ident = mount.option("id") or target
        digest = hashlib.sha256(ident.encode()).hexdigest()
        host = builder.engine.store.path("build-cache", "mounts", digest)
        os.makedirs(host, exist_ok=True)
        return Mount(target=target, type="bind", source=host)
    if mount.type == "bind":
        if mount.from_:
            raise BuildError("RUN --mount=type=bind,from=... is not supported",
                             hint="COPY --from the files into the stage instead")
        context = builder.context()
        rel = mount.source.lstrip("/") or "."
        host = resolve_in_root(context.root, rel)
        if not os.path.exists(host):
            raise BuildError(f"RUN --mount: source {mount.source or '.'} is not in the context")
        readonly = True if mount.readonly is None else mount.readonly
        return Mount(target=target, type="bind", source=host, readonly=readonly)
    raise BuildError(f"RUN --mount=type={mount.type} is not supported",
                     hint="sandbox build supports type=cache, type=tmpfs and type=bind")


def run_mounts(builder: Builder, step: RunInstruction, stage: Any) -> tuple[Mount, ...]:
    """The container mounts of ``step``'s ``--mount`` flags."""
    return tuple(_one(builder, m, stage.state.workdir) for m in step.mounts)
