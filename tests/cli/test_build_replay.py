"""The no-change rebuild shortcut (``sandbox.cli._build_replay``) is a true cache hit: every
input of a build defeats it when it changes.

Each test builds, changes one input, builds again and checks the *result*: a replay of the
old record would give the old image, so a wrong replay fails here whatever the output says.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.requires_userns


def _context(path: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "Dockerfile").write_text(dockerfile)
    for name, content in (files or {}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(content)
    return path


def _settle(ctx: Path) -> None:
    """Wait until every file of ``ctx`` is older than the racy window (or no record is
    written, and the next build is not a replay at all)."""
    from sandbox.cli._build_replay import RACY_NS, sign_context

    _, newest = sign_context(str(ctx))
    delay = (newest + RACY_NS - time.time_ns()) / 1e9 + 0.05
    if delay > 0:
        time.sleep(delay)


def _build(cli, *args: str, env: dict[str, str] | None = None) -> str:
    proc = cli("build", "-q", *args, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return str(proc.stdout.strip())


def _records(store: Path) -> set[str]:
    root = store / "build-cache" / "replay"
    return set(os.listdir(root)) if root.exists() else set()


def _out(cli, image: str, *argv: str) -> str:
    proc = cli("run", "--rm", image, *argv)
    assert proc.returncode == 0, proc.stderr
    return str(proc.stdout)


def _replayed(cli, ctx: Path, *args: str, **kw: Any) -> str:
    """Build twice (the second one a replay, checked by its record staying unchanged)."""
    _settle(ctx)
    first = _build(cli, *args, str(ctx), **kw)
    assert _build(cli, *args, str(ctx), **kw) == first
    return first


def test_a_record_is_written_and_replayed(cli, busybox_image: str, tmp_path: Path,
                                          session_store: Path) -> None:
    ctx = _context(tmp_path / "ctx", "FROM busybox\nCOPY f /f\n", {"f": "1\n"})
    _settle(ctx)
    before = _records(session_store)
    image = _build(cli, str(ctx))
    (new,) = _records(session_store) - before
    record = session_store / "build-cache" / "replay" / new
    stamp = record.stat().st_mtime_ns
    assert _build(cli, str(ctx)) == image
    assert record.stat().st_mtime_ns == stamp  # replayed: nothing rewritten


def test_same_size_content_with_its_mtime_put_back(cli, busybox_image: str,
                                                   tmp_path: Path) -> None:
    ctx = _context(tmp_path / "ctx", "FROM busybox\nCOPY f /f\n", {"f": "aaaa\n"})
    _replayed(cli, ctx)
    st = os.stat(ctx / "f")
    (ctx / "f").write_text("bbbb\n")
    os.utime(ctx / "f", ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as before
    assert _out(cli, _build(cli, str(ctx)), "cat", "/f") == "bbbb\n"


def test_a_file_changed_right_after_the_signature_leaves_no_record(
        cli, busybox_image: str, tmp_path: Path, session_store: Path) -> None:
    ctx = _context(tmp_path / "ctx", "FROM busybox\nCOPY f /f\nLABEL racy=1\n", {"f": "1\n"})
    # "changed just now", however slowly the build starts on a loaded machine
    future = time.time_ns() + 60 * 10**9
    os.utime(ctx / "f", ns=(future, future))
    before = _records(session_store)
    _build(cli, str(ctx))
    assert _records(session_store) == before


def test_dockerfile_text(cli, busybox_image: str, tmp_path: Path) -> None:
    ctx = _context(tmp_path / "ctx", "FROM busybox\nENV V=1\n")
    _replayed(cli, ctx)
    (ctx / "Dockerfile").write_text("FROM busybox\nENV V=2\n")
    assert _out(cli, _build(cli, str(ctx)), "sh", "-c", "echo $V") == "2\n"


def test_build_args_given_and_from_the_environment(cli, busybox_image: str,
                                                   tmp_path: Path) -> None:
    ctx = _context(tmp_path / "ctx", "FROM busybox\nARG A=0\nARG B=0\n"
                   "RUN echo $A$B > /v\n")
    _replayed(cli, ctx, "--build-arg", "A=1", "--build-arg", "B", env={"B": "1"})
    image = _build(cli, "--build-arg", "A=2", "--build-arg", "B", str(ctx), env={"B": "1"})
    assert _out(cli, image, "cat", "/v") == "21\n"
    image = _build(cli, "--build-arg", "A=1", "--build-arg", "B", str(ctx), env={"B": "3"})
    assert _out(cli, image, "cat", "/v") == "13\n"


def test_target_labels_and_source_date_epoch(cli, busybox_image: str, tmp_path: Path,
                                             session_store: Path) -> None:
    ctx = _context(tmp_path / "ctx", "FROM busybox AS one\nRUN echo one > /s\n"
                   "FROM busybox AS two\nRUN echo two > /s\n")
    _replayed(cli, ctx, "--target", "one")
    assert _out(cli, _build(cli, "--target", "two", str(ctx)), "cat", "/s") == "two\n"
    from sandbox.images import ImageStore
    from sandbox.store import Store

    images = ImageStore(Store(session_store))
    labelled = _build(cli, "--target", "one", "--label", "l=x", str(ctx))
    assert images.get(labelled).config["config"]["Labels"] == {"l": "x"}
    dated = _build(cli, "--target", "one", str(ctx), env={"SOURCE_DATE_EPOCH": "1000000000"})
    assert images.get(dated).config["created"] == "2001-09-09T01:46:40Z"


def test_dockerignore_in_and_outside_the_context(cli, busybox_image: str,
                                                 tmp_path: Path) -> None:
    ctx = _context(tmp_path / "ctx", "FROM busybox\nCOPY . /c/\n",
                   {"a.txt": "a\n", "b.txt": "b\n", ".dockerignore": "a.txt\n"})
    listing = ["sh", "-c", "ls /c"]
    _replayed(cli, ctx)
    (ctx / ".dockerignore").write_text("b.txt\n")
    assert _out(cli, _build(cli, str(ctx)), *listing) == "Dockerfile\na.txt\n"
    # -f names a Dockerfile outside the context: its own .dockerignore is read from there
    df = tmp_path / "df"
    _context(df, "FROM busybox\nCOPY . /c/\n", {"Dockerfile.dockerignore": "a.txt\n"})
    _settle(df)
    _replayed(cli, ctx, "-f", str(df / "Dockerfile"))
    (df / "Dockerfile.dockerignore").write_text("b.txt\n")
    image = _build(cli, "-f", str(df / "Dockerfile"), str(ctx))
    assert _out(cli, image, *listing) == "Dockerfile\na.txt\n"


def test_base_image_and_copy_from_image_retagged(cli, busybox_image: str,
                                                 tmp_path: Path) -> None:
    def make(name: str, value: str) -> None:
        base = _context(tmp_path / f"{name}-{value}", f"FROM busybox\nRUN echo {value} > /v\n")
        _build(cli, "-t", name, str(base))

    make("replay-base", "b1")
    make("replay-src", "s1")
    ctx = _context(tmp_path / "ctx", "FROM replay-base\nCOPY --from=replay-src /v /src\n")
    _replayed(cli, ctx)
    make("replay-src", "s2")
    assert _out(cli, _build(cli, str(ctx)), "cat", "/v", "/src") == "b1\ns2\n"
    make("replay-base", "b2")
    assert _out(cli, _build(cli, str(ctx)), "cat", "/v", "/src") == "b2\ns2\n"


def test_no_cache_pull_and_pruned_cache(cli, busybox_image: str, tmp_path: Path) -> None:
    ctx = _context(tmp_path / "ctx", "FROM busybox\nRUN echo x > /x\n")
    _replayed(cli, ctx)
    proc = cli("build", "--no-cache", str(ctx), timeout=180)
    assert proc.returncode == 0 and "Using cache" not in proc.stdout
    assert cli("builder", "prune", "-f").returncode == 0
    proc = cli("build", str(ctx), timeout=180)
    assert proc.returncode == 0 and "Using cache" not in proc.stdout


def test_network_and_platform(cli, busybox_image: str, tmp_path: Path) -> None:
    ctx = _context(tmp_path / "ctx", "FROM busybox\nARG TARGETPLATFORM\n"
                   "RUN ls /sys/class/net > /nets; echo $TARGETPLATFORM > /p\n")
    _replayed(cli, ctx)
    host = _build(cli, "--network", "host", str(ctx))
    assert _out(cli, host, "cat", "/nets").split() == sorted(os.listdir("/sys/class/net"))
    from sandbox.oci import host_platform

    platform = str(host_platform().normalized())
    proc = cli("build", "-q", "--platform", "linux/s390x" if "s390x" not in platform
               else "linux/amd64", str(ctx), timeout=180)
    assert proc.returncode == 125 and "cannot build for" in proc.stderr
    assert _out(cli, _build(cli, "--platform", platform, str(ctx)), "cat", "/p") == \
        f"{platform}\n"
