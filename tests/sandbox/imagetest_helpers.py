"""Helpers shared by the image, archive and image-CLI tests: serve test images from a fake
registry (counting blob downloads), push them to a real one, read a store's state."""

from __future__ import annotations

import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

from registry_fixtures import FakeRegistry, Image, send, serve_bytes

from sandbox.oci import digest_of

__all__ = ["serve_image", "store_state", "tar_with", "blob_gets", "Sandbox"]


def serve_image(fake: FakeRegistry, repo: str, image: Image, tag: str = "latest", *,
                delay: float = 0.0, counts: dict[str, int] | None = None,
                corrupt: str | None = None, index: bytes | None = None) -> None:
    """Routes serving ``image`` (and an optional index as the tag) as ``repo:tag``."""
    lock = threading.Lock()
    top = index if index is not None else image.manifest
    top_type = json.loads(top).get("mediaType", image.media_type)
    for ref, data, mt in ((tag, top, top_type), (digest_of(top), top, top_type),
                          (image.digest, image.manifest, image.media_type)):
        fake.routes[("GET", f"/v2/{repo}/manifests/{ref}")] = serve_bytes(
            data, mt, {"Docker-Content-Digest": digest_of(data)})
    for digest, data in image.blobs.items():
        body = b"X" * len(data) if digest == corrupt else data
        inner = serve_bytes(body)

        def route(req: http.server.BaseHTTPRequestHandler, inner: Any = inner,
                  digest: str = digest) -> None:
            if counts is not None:
                with lock:
                    counts[digest] = counts.get(digest, 0) + 1
            if delay:
                time.sleep(delay)
            inner(req)
        fake.routes[("GET", f"/v2/{repo}/blobs/{digest}")] = route


def blob_gets(fake: FakeRegistry) -> list[str]:
    return [path for method, path, _ in fake.seen if method == "GET" and "/blobs/" in path]


def store_state(root: Path) -> dict[str, Any]:
    """What is on disk: blobs, layers, tmp entries, index names."""
    def ls(*parts: str) -> list[str]:
        p = root.joinpath(*parts)
        return sorted(os.listdir(p)) if p.is_dir() else []

    index = json.loads((root / "index.json").read_text()) if (root / "index.json").exists() \
        else {"manifests": []}
    return {"blobs": ls("blobs", "sha256"), "layers": ls("layers"), "tmp": ls("tmp"),
            "names": sorted((m.get("annotations") or {}).get(
                "org.opencontainers.image.ref.name", "") for m in index["manifests"])}


def tar_with(members: list[tuple[str, bytes | None]]) -> bytes:
    """A tar of files (bytes) and directories (None), names taken as given (even hostile)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def broken_route(data: bytes, cut: int) -> Any:
    """A route announcing ``data`` but closing the connection after ``cut`` bytes."""
    def route(req: http.server.BaseHTTPRequestHandler) -> None:
        send_headers_only(req, len(data))
        req.wfile.write(data[:cut])
        req.wfile.flush()
        req.close_connection = True
    return route


def send_headers_only(req: http.server.BaseHTTPRequestHandler, length: int) -> None:
    req.send_response(200)
    req.send_header("Content-Length", str(length))
    req.send_header("Connection", "close")
    req.end_headers()


__all__ += ["broken_route", "send"]


class Sandbox:
    """``python -m sandbox`` with its own store, HOME and credentials."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "root"
        home = tmp / "home"
        home.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "SANDBOX_ROOT": str(self.root), "HOME": str(home),
                    "XDG_CONFIG_HOME": str(home / ".config"),
                    "XDG_RUNTIME_DIR": str(tmp / "run"), "DOCKER_CONFIG": str(home / ".docker")}
        for var in ("REGISTRY_AUTH_FILE", "SANDBOX_INSECURE_REGISTRIES"):
            self.env.pop(var, None)

    def __call__(self, *args: str, input: str | None = None, ok: bool = True,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "sandbox", *args], input=input,
                              capture_output=True, text=True, env=self.env, timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL,
                              check=False)
        if ok:
            assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        return proc

    def fails(self, *args: str, input: str | None = None, code: int = 125) -> str:
        proc = self(*args, input=input, ok=False)
        assert proc.returncode == code, (args, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sandbox: "), proc.stderr
        assert "Traceback" not in proc.stderr
        return lines[0]

    def popen(self, *args: str, new_session: bool = False) -> subprocess.Popen[str]:
        """``new_session``: its own process group, so a test can signal the whole group as a
        terminal's Ctrl-C does."""
        return subprocess.Popen([sys.executable, "-m", "sandbox", *args], env=self.env,
                                text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, start_new_session=new_session)
