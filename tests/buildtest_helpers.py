"""Helpers of the ``sandbox build`` CLI tests: a build context, a build, an image of a store."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def make_context(tmp_path: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    """``tmp_path/ctx`` with ``dockerfile`` as its Dockerfile and ``files`` (name -> text)."""
    ctx = tmp_path / "ctx"
    ctx.mkdir(parents=True, exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    for name, content in (files or {}).items():
        path = ctx / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return ctx


def store_image(store: Path, name: str) -> Any:
    from sandbox.images import ImageStore
    from sandbox.store import Store

    return ImageStore(Store(store)).get(name)


def run_build(cli: Any, *args: str, ok: bool = True, **kw: Any) -> Any:
    """``sandbox build ARGS``; with ``ok`` it must succeed (its output shown otherwise)."""
    proc = cli("build", *args, timeout=180, **kw)
    if ok:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc
