"""``sandbox build``: ADD of remote archives, proxy args, CLI paths, base image pulls,
network escalation, tag validation, -q failures and interrupted builds."""

from __future__ import annotations

import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.requires_userns


def _context(tmp_path: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir(parents=True, exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    for name, content in (files or {}).items():
        path = ctx / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return ctx


def _image(store: Path, name: str) -> Any:
    from sandbox.images import ImageStore
    from sandbox.store import Store

    return ImageStore(Store(store)).get(name)


def _build(cli, *args: str, ok: bool = True, **kw: Any) -> Any:
    proc = cli("build", *args, timeout=180, **kw)
    if ok:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server of a directory."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _targz(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))


# -- ADD of a remote archive --------------------------------------------------------------------

def test_add_url_archive_is_stored_as_is_unless_unpack(cli, busybox_image: str, tmp_path: Path,
                                                       http_dir: tuple[str, Path]) -> None:
    url, root = http_dir
    _targz(root / "bundle.tar.gz", {"pkg/inner.txt": b"inside\n"})
    _targz(tmp_path / "local.tar.gz", {"loc/l.txt": b"local\n"})
    ctx = _context(tmp_path, f"FROM busybox\nADD {url}/bundle.tar.gz /plain/\n"
                   f"ADD --unpack=true {url}/bundle.tar.gz /unpacked/\n"
                   "ADD local.tar.gz /local/\n"
                   "ADD --unpack=false local.tar.gz /local-kept/\n"
                   "CMD [\"sh\", \"-c\", \"ls /plain /local-kept; cat /unpacked/pkg/inner.txt "
                   "/local/loc/l.txt; gzip -dc /plain/bundle.tar.gz | tar -t\"]\n")
    (ctx / "local.tar.gz").write_bytes((tmp_path / "local.tar.gz").read_bytes())
    _build(cli, "-t", "addurl-archive", str(ctx))
    out = cli("run", "--rm", "addurl-archive").stdout
    assert out == "/local-kept:\nlocal.tar.gz\n\n/plain:\nbundle.tar.gz\ninside\nlocal\n" \
                  "pkg/inner.txt\n"


# -- predefined proxy args ----------------------------------------------------------------------

def test_undeclared_proxy_arg_reaches_run_but_not_history_or_cache_key(
        cli, busybox_image: str, tmp_path: Path, session_store: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox\nARG DECLARED=d\n"
                   "RUN echo \"$http_proxy $DECLARED\" > /seen\n")
    proxy = "http://user:secret@127.0.0.1:3128"
    _build(cli, "--build-arg", f"http_proxy={proxy}", "-t", "proxied", str(ctx))
    assert cli("run", "--rm", "proxied", "cat", "/seen").stdout == f"{proxy} d\n"
    history = _image(session_store, "proxied").config["history"]
    assert history[-1]["created_by"] == "|1 DECLARED=d /bin/sh -c echo \"$http_proxy " \
                                        "$DECLARED\" > /seen"
    assert "secret" not in cli("history", "--no-trunc", "proxied").stdout
    # another proxy: the same step from the cache
    out = _build(cli, "--build-arg", "http_proxy=http://other:3128", str(ctx)).stdout
    assert out.count(" ---> Using cache") == 2
